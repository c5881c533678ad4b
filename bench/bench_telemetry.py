"""What MQTT telemetry costs the prediction hot path: throughput with telemetry on vs off.

    python bench/bench_telemetry.py                                  # trains machine-health
    python bench/bench_telemetry.py BUNDLE --broker mqtt://127.0.0.1:1883 --seconds 2 --rounds 7

The loop is what the HTTP server does per request, in-process (no sockets, so the
telemetry share is the largest it can be): ``feeds = predictor.feeds(rows)``,
``predictor.run(feeds)``, ``stats.record(...)`` (which calls the observers). Modes, run
round-robin in the same process so machine noise hits all alike:

- ``off``: Predictor + RuntimeStats, nothing else;
- ``on``: plus a DeviceAgent connected to the broker, metrics every second, sampling off;
- ``on+samples``: plus ``--sample-rate 1`` capped at 60/min (every row goes through the sampler);
- ``on+samples-1%``: ``--sample-rate 0.01`` (a typical opt-in).

Each round builds a fresh agent (own thread, real broker, real spool) and stops it after.
Printed: median predictions/s per mode over the rounds and the ratio to ``off``.
Target: telemetry costs <= 3 %.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeml.runtime.predictor import Predictor  # noqa: E402
from edgeml.runtime.settings import BrokerSettings, TelemetrySettings  # noqa: E402
from edgeml.runtime.stats import RuntimeStats  # noqa: E402
from edgeml.runtime.telemetry import DeviceAgent  # noqa: E402

MODES = {"off": None, "on": 0.0, "on+samples": 1.0, "on+samples-1%": 0.01}


def _bundle(out: Path, recipe: str) -> Path:
    from rich.console import Console

    from edgeml.package.builder import package
    from edgeml.train.workflow import train

    quiet = Console(quiet=True)
    registry = out / "registry"
    train(ROOT / "models" / f"{recipe}.yaml", registry=registry, console=quiet)
    result = package(recipe, target="x86_64", registry=registry,
                     out_dir=out / "bundles", console=quiet)
    return Path(result.path)


def _rows(predictor: Predictor) -> list[list[dict[str, Any]]]:
    rows = []
    for i in range(16):
        row: dict[str, Any] = {}
        for spec in predictor.inputs:
            if spec.dtype == "string":
                cats = spec.categories or ["x"]
                row[spec.name] = cats[i % len(cats)]
            else:
                lo = spec.min if spec.min is not None else 0.0
                hi = spec.max if spec.max is not None else 1.0
                row[spec.name] = float(lo + (hi - lo) * (i + 0.5) / 16)
        rows.append([row])
    return rows


def _loop(
    predictor: Predictor, stats: RuntimeStats, batches: list[Any], seconds: float
) -> tuple[float, float]:
    """(predictions per wall second, process CPU microseconds per prediction).

    Process CPU time includes the agent's and paho's threads: it is the whole cost of
    telemetry, and other processes on a shared machine do not disturb it.
    """
    feeds_of, run, record, clock = predictor.feeds, predictor.run, stats.record, time.perf_counter
    n = 0
    cpu0 = time.process_time()
    start = clock()
    end = start + seconds
    while True:
        for rows in batches:
            t0 = clock()
            feeds = feeds_of(rows)
            pred = run(feeds)
            record("/v1/predict", clock() - t0, feeds, pred)
        n += len(batches)
        if clock() >= end:
            break
    wall = clock() - start
    return n / wall, (time.process_time() - cpu0) / n * 1e6


def _observer_cost(predictor: Predictor, batches: list[Any], calls: int = 200_000) -> dict[str, float]:
    """Nanoseconds per call of the sampling observer alone (the only telemetry code that
    runs on the prediction path), measured without any other work around it."""
    from edgeml.runtime.sampling import Sampler

    feeds = predictor.feeds(batches[0])
    pred = predictor.run(feeds)
    out = {}
    # (With sampling off the agent registers no observer: nothing runs on the hot path.)
    for label, rate in (("sampler 1%", 0.01), ("sampler 100%", 1.0)):
        sampler = Sampler(rate, 60, seed=1)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls // 5):
                sampler(feeds, pred, 0.0, "http")
            best = min(best, (time.perf_counter() - t0) / (calls // 5) * 1e9)
            sampler.drain()
        out[label] = best
    return out


def _agent_cpu(predictor: Predictor, broker: str, spool: Path, seconds: float = 5.0) -> float:
    """CPU milliseconds per second that a running agent (metrics every 1 s) costs while the
    main thread sleeps: its loop, the metrics window, JSON, SQLite, paho. Baseline subtracted."""

    def idle(with_agent: bool) -> float:
        stats = RuntimeStats.for_predictor(predictor)
        agent = None
        if with_agent:
            agent = DeviceAgent(predictor, stats, BrokerSettings.from_url(broker), TelemetrySettings(
                device_id=f"bench-{uuid.uuid4().hex[:6]}", fleet="bench", metrics_interval=1.0,
                spool_dir=spool))
            agent.start()
            time.sleep(0.5)  # connected and announced
        cpu0 = time.process_time()
        time.sleep(seconds)
        used = time.process_time() - cpu0
        if agent is not None:
            agent.stop()
            _clear(broker, agent.topics.root)
        return used

    return (idle(True) - idle(False)) / seconds * 1000.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, help="bundle (default: train machine-health)")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--recipe", default="machine-health",
                        help="models/<recipe>.yaml to train when no bundle is given")
    parser.add_argument("--seconds", type=float, default=1.0, help="per mode per round")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or _bundle(Path(tmp), args.recipe)
        predictor = Predictor(bundle)
        batches = _rows(predictor)
        device = f"bench-{uuid.uuid4().hex[:6]}"
        rates: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
        names = list(MODES)
        for round_no in range(args.rounds):
            # Rotate the order so that no mode always runs first (or right after another).
            for mode in names[round_no % len(names):] + names[:round_no % len(names)]:
                sample_rate = MODES[mode]
                stats = RuntimeStats.for_predictor(predictor)
                agent = None
                if sample_rate is not None:
                    agent = DeviceAgent(predictor, stats, BrokerSettings.from_url(args.broker),
                                        TelemetrySettings(device_id=device, fleet="bench",
                                                          metrics_interval=1.0,
                                                          spool_dir=Path(tmp) / "spool",
                                                          sample_rate=sample_rate))
                    agent.start()
                    deadline = time.monotonic() + 5
                    while not agent.connected and time.monotonic() < deadline:
                        time.sleep(0.01)
                    if not agent.connected:
                        raise SystemExit(f"cannot connect to {args.broker}")
                rate, micros = _loop(predictor, stats, batches, args.seconds)
                rates[mode].append(rate)
                cpu[mode].append(micros)
                if agent is not None:
                    agent.stop()
        _clear(args.broker, f"edgeml/bench/{device}")
        observer = _observer_cost(predictor, batches)
        agent_ms = _agent_cpu(predictor, args.broker, Path(tmp) / "spool-idle")

    base_cpu = statistics.median(cpu["off"])
    print(f"bundle: {Path(bundle).name}  rounds: {args.rounds} x {args.seconds:.1f} s per mode "
          "(batch of 1 row, in-process)")
    print("ratios are medians of per-round ratios to the same round's `off` (paired: slow drifts")
    print("of a shared machine cancel out); CPU is process CPU time, agent threads included")
    print(f"{'mode':<16}{'pred/s':>10}{'ratio':>8}{'CPU us/pred':>13}{'ratio':>8}{'cost':>8}")
    for mode in MODES:
        med = statistics.median(rates[mode])
        ratio = statistics.median(a / b for a, b in zip(rates[mode], rates["off"], strict=True))
        us = statistics.median(cpu[mode])
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu[mode], cpu["off"], strict=True))
        print(f"{mode:<16}{med:>10,.0f}{ratio:>8.3f}{us:>13.1f}{cpu_ratio:>8.3f}"
              f"{(cpu_ratio - 1) * 100:>7.1f}%")
    print(f"sampler on the hot path, per call while registered (best of 5; one prediction is {base_cpu * 1000:,.0f} ns "
          "of CPU):")
    for label, ns in observer.items():
        print(f"  {label:<14}{ns:>8.0f} ns  = {ns / (base_cpu * 1000) * 100:.2f} % of a prediction")
    print(f"agent thread, metrics every 1 s: {agent_ms:.2f} ms CPU per second "
          f"= {agent_ms / 10:.2f} % of one core (every 10 s, the default: about a tenth of that)")


def _clear(broker: str, root: str) -> None:
    """Remove the retained $state/$info the benchmark left on the broker."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    settings = BrokerSettings.from_url(broker)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-clean-{uuid.uuid4().hex[:6]}")
    client.connect(settings.host, settings.port)
    client.loop_start()
    for leaf in ("$state", "$info"):
        client.publish(f"{root}/{leaf}", b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
