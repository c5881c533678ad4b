"""How many metrics messages one ``edgeml monitor`` stores per second (QoS 1, ack after commit).

    python bench/bench_monitor.py                     # ~1.5 minutes: 16,000 messages, one round
    python bench/bench_monitor.py BUNDLE --messages 20000 --rounds 3

A private Mosquitto (unbounded queues, no persistence) and the publisher run on this
machine. Each round: the monitor(s) subscribe once and stop, ``--messages`` metrics
windows (built by the runtime's own RuntimeStats + payloads code from real predictions,
``--devices`` devices) are published at QoS 1 into their persistent sessions, then the
monitor(s) start and the time from the first stored row to the last is measured: the
ingest rate of a monitor catching up, without the publisher competing for the CPU.
Stores: a SQLite file, and PostgreSQL (``--pg``, default the machine's server; a
database is created per round and dropped). Modes: one monitor, and two monitors in one
shared-subscription group, and one ``edgeml monitor --workers 2`` (two processes in one
group, started and supervised by one command). Printed per mode: the median wall rate
over the rounds (messages/s from the first stored row to the last) with its ratio to the
target (8,000/s SQLite, 5,000/s PostgreSQL, i.e. 80,000 devices reporting every 10 s, or
50,000), and messages per monitor CPU-second (all monitor processes' user + system CPU
over the same span): on a shared machine the wall rate depends on what else runs, the
CPU figure much less; on an idle machine a process reaches at most one core, so
msg/CPU-s is also the best wall rate one monitor process can give.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from edgeml.fleet.migrate import upgrade  # noqa: E402
from edgeml.runtime import payloads  # noqa: E402
from edgeml.runtime.predictor import Predictor  # noqa: E402
from edgeml.runtime.stats import RuntimeStats  # noqa: E402
from edgeml.runtime.topics import DeviceTopics  # noqa: E402

TARGETS = {"sqlite": 8000.0, "postgresql": 5000.0}
# (name, monitors started, --workers of each)
MODES = (("1 monitor", 1, 1), ("2 monitors", 2, 1), ("--workers 2", 1, 2))


def _bundle(out: Path) -> Path:
    """The tests' small classification bundle (3 inputs: 2 numeric, 1 categorical)."""
    from _mqtt_support import make_bundle

    return make_bundle(out / "bundle")


def _windows(bundle: Path, base: str, devices: int, count: int) -> list[tuple[str, bytes]]:
    """``count`` windows round-robin over ``devices`` devices, each with 8 real predictions."""
    import json
    import zipfile

    predictor = Predictor(bundle)
    with zipfile.ZipFile(bundle) as zf:
        rows = json.loads(zf.read("selftest.json"))["rows"]
    feeds = predictor.feeds((rows * 8)[:8])
    out: list[tuple[str, bytes]] = []
    agents = []
    for i in range(devices):
        topics = DeviceTopics.create(base, "bench", f"dev-{i:05d}")
        stats = RuntimeStats.for_predictor(predictor)
        agents.append((SimpleNamespace(topics=topics, session=1, predictor=predictor), stats))
    prediction = predictor.run(feeds)
    for n in range(count):
        agent, stats = agents[n % devices]
        stats.record("v2/models/infer", 0.001 + 0.0005 * np.random.rand(), feeds, prediction)
        rest, times = payloads.split_window(stats.window(reset=True))
        body = payloads.metrics(agent, n // devices + 1, rest, {
            "window": times, "process": {"rss_bytes": 50_000_000, "cpu_percent": 3.0},
            "system": {"temperature_c": 48.0, "load1": 0.3},
            "spool": {"queued": 0, "dropped_total": 0}})
        out.append((agent.topics.metrics, payloads.dumps(body)))
    return out


def _broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    from _fleet_support import _connects, wait_until
    from _mqtt_support import free_port

    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_until(lambda: _connects(socket, port), 10, "mosquitto")
    return proc, port


def _count(engine: object) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(text("SELECT count(*) FROM metrics_windows")).scalar() or 0)


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _tree(pids: list[int]) -> list[int]:
    """``pids`` and their children (the worker processes of ``--workers``)."""
    out = list(pids)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) in pids:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _calibration() -> float:
    """µs for json.loads of a 1.4 KB metrics-like document (a quiet 2020s x86 core: ~10 µs)."""
    import json
    import timeit

    doc = json.dumps({"features": {f"f{i}": {"counts": list(range(12)), "missing": 0}
                                   for i in range(8)}, "latency_ms": {"p95": 1.25}})
    return min(timeit.repeat(lambda: json.loads(doc), number=500, repeat=5)) / 500 * 1e6


def _start(broker: str, db: str, base: str, cid: str, group: list[str], workers: int) -> object:
    from _fleet_support import start_monitor, wait_until

    mon = start_monitor(broker, db, base, cid, *group, "--workers", str(workers))
    wait_until(lambda: mon.output().count("connected to") >= workers, 30, "every worker")
    time.sleep(0.5)  # SUBACK of the last one
    return mon


def _round(db: str, port: int, messages: list[tuple[str, bytes]], base: str,
           monitors: int, workers: int = 1) -> tuple[float, float]:
    from _fleet_support import Publisher

    upgrade(db)
    ids = [f"bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(monitors)]
    broker = f"mqtt://127.0.0.1:{port}"
    group = ["--group", f"g{uuid.uuid4().hex[:6]}"]
    for cid in ids:  # create the persistent sessions and subscriptions, then go away
        _start(broker, db, base, cid, group, workers).terminate()  # type: ignore[attr-defined]
    pub = Publisher(port, inflight=1000)
    for topic, body in messages:
        pub.send(topic, body)
    pub.close()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(ids)) as pool:  # together: each catches up its own share
        procs = list(pool.map(lambda cid: _start(broker, db, base, cid, group, workers), ids))
    pids = _tree([p.proc.pid for p in procs])  # type: ignore[attr-defined]
    engine = create_engine(db)
    try:
        first = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            n = _count(engine)
            now = time.perf_counter()
            if first is None and n > 0:
                first = (now, n, _cpu_s(pids))
            if n >= len(messages):
                assert first is not None
                cpu = _cpu_s(pids) - first[2]
                done = n - first[1]
                return done / max(now - first[0], 1e-9), done / max(cpu, 1e-9)
            time.sleep(0.05)
        raise RuntimeError(f"only {n} of {len(messages)} stored")
    finally:
        engine.dispose()
        for p in procs:
            p.terminate()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path,
                        help="bundle (default: the tests' 3-input classifier)")
    parser.add_argument("--messages", type=int, default=16_000)
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stores", default="sqlite,postgresql",
                        help="comma-separated: sqlite, postgresql")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432",
                        help="PostgreSQL server URL without database ('' to skip)")
    args = parser.parse_args(argv)
    from _fleet_support import pg_database

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bundle = args.bundle or _bundle(folder)
        base = f"bench-{uuid.uuid4().hex[:6]}"
        messages = _windows(bundle, base, args.devices, args.messages)
        size = statistics.median(len(b) for _, b in messages)
        print(f"{len(messages)} metrics windows of {size:.0f} bytes (median), {args.devices} "
              f"devices, QoS 1, {os.cpu_count()} cores", flush=True)
        broker, port = _broker(folder)
        rates: dict[tuple[str, str], list[float]] = {}
        per_cpu: dict[tuple[str, str], list[float]] = {}
        stores = [k for k in args.stores.split(",") if k and (k != "postgresql" or args.pg)]
        try:
            for r in range(args.rounds):
                for kind in stores:
                    for mode, monitors, workers in MODES:
                        if kind == "sqlite":
                            db = f"sqlite:///{folder / f'bench-{r}-{mode}.db'}"
                            rate, cpu = _round(db, port, messages, base, monitors, workers)
                        else:
                            with pg_database(args.pg) as db:
                                rate, cpu = _round(db, port, messages, base, monitors, workers)
                        rates.setdefault((kind, mode), []).append(rate)
                        per_cpu.setdefault((kind, mode), []).append(cpu)
                        print(f"  round {r + 1}: {kind:10s} {mode:12s}: {rate:8.0f} msg/s "
                              f"({cpu:.0f} per monitor CPU-second)", flush=True)
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    print(f"\n{'store':11s} {'mode':12s} {'wall msg/s':>10s} {'target':>7s} {'ratio':>6s} "
          f"{'vs 1':>5s} {'msg/CPU-s':>10s} {'CPU ratio':>9s}")
    for kind in stores:
        one = statistics.median(rates[(kind, MODES[0][0])])
        for mode, _m, _w in MODES:
            med = statistics.median(rates[(kind, mode)])
            cpu = statistics.median(per_cpu[(kind, mode)])
            print(f"{kind:11s} {mode:12s} {med:10.0f} {TARGETS[kind]:7.0f} "
                  f"{med / TARGETS[kind]:6.2f} {med / one:5.2f} {cpu:10.0f} "
                  f"{cpu / TARGETS[kind]:9.2f}")
    print(f"calibration: json.loads of 1.4 KB takes {_calibration():.1f} us here "
          f"(~10 us on a quiet 2020s x86 core); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
