"""How long a bundle takes to reach devices over MQTT: one agent, then many at once.

    python bench/bench_agent.py                       # 1 MiB, 5 rounds on one agent, 20 agents
    python bench/bench_agent.py --size-kib 1024 --rounds 5 --agents 20 --chunk-kib 64

Real ``edgeml agent`` processes (``--allow-unsigned``, HTTP on free ports), the broker at
``--broker`` (loopback Mosquitto), the chunk server of ``edgeml.agent.chunkserver`` in this
process. A bundle of ``--size-kib`` is the tiny test model padded with an incompressible
member. Timed, from the command's publication:

- ``verified``: every chunk on the device's disk (fsynced), the whole file's sha256 and the
  self-test passed: the bundle has *reached* the device;
- ``switched``: the server answers with the new model.

One device: the median over ``--rounds`` deployments of successive versions to the same
agent. Many devices: ``--agents`` agents get the same bundle at once; the time until the
last one. Targets (issue 10): one device < 2 s, 20 devices < 30 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent_support import AgentProcess, Watcher, make_bundle, unique_base  # noqa: E402

from edgeml.agent.chunkserver import ChunkServer  # noqa: E402
from edgeml.runtime.settings import BrokerSettings  # noqa: E402


def _deploy_and_time(server: ChunkServer, watcher: Watcher, devices: list[str], bundle: Path,
                     ident: str, chunk: int) -> tuple[float, float]:
    offer = server.offer(bundle, chunk)
    since = len(watcher.reports)
    wall = time.time()
    for device in devices:
        server.deploy("bench", device, ident, offer, soak_s=0.0)
    verified = switched = 0.0
    for device in devices:
        for event in ("verified", "switched", "committed"):
            report = watcher.wait((event, "failed", "rolled_back"), ident, 120, device=device,
                                  since=since)
            if report["event"] != event:
                raise SystemExit(f"{device}: {report['event']}: {report['reason']}")
            if event == "verified":
                verified = max(verified, _at(report) - wall)
            elif event == "switched":
                switched = max(switched, _at(report) - wall)
    return verified, switched


def _at(report: dict[str, object]) -> float:
    """The report's own time stamp (the agent's clock: same machine)."""
    stamp = str(report["at"]).rstrip("Z")
    return datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--size-kib", type=int, default=1024)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--agents", type=int, default=20)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    base = unique_base()
    watcher = Watcher(base)
    chunk = args.chunk_kib * 1024
    pad = args.size_kib * 1024
    first = make_bundle(tmp / "bundles", 1)
    agents: list[AgentProcess] = []
    try:
        with ChunkServer(BrokerSettings.from_url(args.broker), base) as server:
            # -- one device, several rounds --------------------------------------------
            device = f"one-{uuid.uuid4().hex[:6]}"
            since = len(watcher.reports)
            agents.append(AgentProcess(tmp / "one", base, device, "--allow-unsigned",
                                       bundle=first, fleet="bench"))
            watcher.wait("status", device=device, since=since, timeout=60)
            size = 0
            verified, switched = [], []
            for n in range(args.rounds):
                bundle = make_bundle(tmp / "bundles", n + 2, pad=pad)
                size = bundle.stat().st_size
                v, s = _deploy_and_time(server, watcher, [device], bundle, f"one-{n}", chunk)
                verified.append(v)
                switched.append(s)
            one_v, one_s = statistics.median(verified), statistics.median(switched)
            agents.pop().stop()
            # -- many devices at once ----------------------------------------------------
            many = [f"many-{i}-{uuid.uuid4().hex[:4]}" for i in range(args.agents)]
            since = len(watcher.reports)
            for i, dev in enumerate(many):
                agents.append(AgentProcess(tmp / f"many-{i}", base, dev, "--allow-unsigned",
                                           bundle=first, fleet="bench", wait=False))
            for dev in many:
                watcher.wait("status", device=dev, since=since, timeout=180)
            bundle = make_bundle(tmp / "bundles", 100, pad=pad)
            many_v, many_s = _deploy_and_time(server, watcher, many, bundle, "many", chunk)
    finally:
        for agent in agents:
            agent.stop()
            agent.read_stderr()
        watcher.close()
        shutil.rmtree(tmp, ignore_errors=True)
    mib = size / 2**20
    print(f"bundle {mib:.2f} MiB in {args.chunk_kib} KiB chunks, broker {args.broker}")
    print(f"{'case':<28}{'verified s':>12}{'switched s':>12}{'target s':>10}{'ratio':>8}")
    print(f"{f'1 device (median of {args.rounds})':<28}{one_v:>12.3f}{one_s:>12.3f}"
          f"{2.0:>10.1f}{one_s / 2.0:>8.2f}")
    print(f"{f'{args.agents} devices at once (last)':<28}{many_v:>12.3f}{many_s:>12.3f}"
          f"{30.0:>10.1f}{many_s / 30.0:>8.2f}")
    print(f"throughput: {mib / one_v:.1f} MiB/s to one device, "
          f"{mib * args.agents / many_v:.1f} MiB/s to {args.agents}")


if __name__ == "__main__":
    main()
