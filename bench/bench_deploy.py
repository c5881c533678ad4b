"""A bundle to devices through the monitor (fleet database + rollout controller) vs the
test-side ChunkServer: one agent, then many at once.

    python bench/bench_deploy.py                  # 1 MiB, 3 rounds on one agent, 20 agents
    python bench/bench_deploy.py --size-kib 1024 --rounds 3 --agents 20 --db sqlite:///x.db

Real ``edgeml agent`` processes and the broker at ``--broker``. Two paths, the same agents:

- ``chunkserver``: :class:`edgeml.agent.chunkserver.ChunkServer` in this process sends the
  command and answers chunks from the file (as ``bench/bench_agent.py``);
- ``monitor``: an in-process :class:`edgeml.fleet.monitor.Monitor` on a fresh store
  (``--db``, default a SQLite file) drives a deployment made by
  :func:`edgeml.fleet.deploys.create_deployment` (one stage, ``soak 0``) and answers chunks
  from the ``bundles`` table.

Timed until ``verified`` (the whole bundle on the device, checked) and ``switched`` (the new
model serves): from the command's publication (ChunkServer: its publish; monitor: the
controller's ``sent_at``), and for the monitor also from ``create_deployment`` (adds the
controller's polling, <= 1 s). Printed as medians and as the ratio monitor / chunkserver.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from agent_support import AgentProcess, Watcher, make_bundle, unique_base  # noqa: E402
from bench_agent import _at, _deploy_and_time  # noqa: E402

from edgeml.agent.chunkserver import ChunkServer  # noqa: E402
from edgeml.runtime.settings import BrokerSettings  # noqa: E402


def _via_monitor(store: Any, watcher: Watcher, devices: list[str],
                 bundle: Path, chunk: int) -> tuple[float, float, float]:
    """(verified, switched) from the command's sending, and switched from the creation."""
    from edgeml.fleet.deploys import create_deployment, deployment_status

    since = len(watcher.reports)
    created = time.time()
    ident = create_deployment(store, bundle, "bench", devices=devices, soak_s=0.0,
                              chunk_size=chunk)
    verified = switched = 0.0
    for device in devices:
        for event in ("verified", "switched", "committed"):
            report = watcher.wait((event, "failed", "rolled_back"), ident, 180, device=device,
                                  since=since)
            if report["event"] != event:
                raise SystemExit(f"{device}: {report['event']}: {report['reason']}")
            if event == "verified":
                verified = max(verified, _at(report))
            elif event == "switched":
                switched = max(switched, _at(report))
    sent = min(r["sent_at"].timestamp() for r in deployment_status(store, ident)["devices"])
    return verified - sent, switched - sent, switched - created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--db", default=None, help="fleet store (default: a SQLite file)")
    parser.add_argument("--size-kib", type=int, default=1024)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agents", type=int, default=20)
    args = parser.parse_args()
    from edgeml.fleet.db import open_store
    from edgeml.fleet.migrate import upgrade
    from edgeml.fleet.monitor import Monitor, MonitorSettings

    tmp = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    db = args.db or f"sqlite:///{tmp / 'fleet.db'}"
    upgrade(db)
    store = open_store(db)
    base = unique_base()
    watcher = Watcher(base)
    chunk, pad = args.chunk_kib * 1024, args.size_kib * 1024
    first = make_bundle(tmp / "bundles", 1)
    agents: list[AgentProcess] = []
    version = [1]

    def next_bundle() -> Path:
        version[0] += 1
        return make_bundle(tmp / "bundles", version[0], pad=pad)

    def new_monitor() -> Monitor:
        # never beside the ChunkServer: both would answer every chunk request
        return Monitor(MonitorSettings(args.broker, db, base_topic=base,
                                       group=f"bench{uuid.uuid4().hex[:6]}",
                                       client_id=f"bench-mon-{uuid.uuid4().hex[:6]}"), store)

    results: dict[str, dict[str, float]] = {}
    size = 0
    try:
        for case, count in (("1 device", 1), (f"{args.agents} devices", args.agents)):
            devices = [f"b{count}-{i}-{uuid.uuid4().hex[:4]}" for i in range(count)]
            since = len(watcher.reports)
            for dev in devices:
                agents.append(AgentProcess(tmp / dev, base, dev, "--allow-unsigned",
                                           bundle=first, fleet="bench", wait=False))
            for dev in devices:
                watcher.wait("status", device=dev, since=since, timeout=180)
            rounds = args.rounds if count == 1 else 1
            cs_v, cs_s, mon_v, mon_s, mon_c = [], [], [], [], []
            with ChunkServer(BrokerSettings.from_url(args.broker), base) as server:
                for n in range(rounds):
                    bundle = next_bundle()
                    size = bundle.stat().st_size
                    v, s = _deploy_and_time(server, watcher, devices, bundle,
                                            f"cs-{count}-{n}", chunk)
                    cs_v.append(v)
                    cs_s.append(s)
            monitor = new_monitor()
            monitor.start()
            try:
                assert monitor.wait_subscribed(15)
                for _n in range(rounds):
                    v, s, c = _via_monitor(store, watcher, devices, next_bundle(), chunk)
                    mon_v.append(v)
                    mon_s.append(s)
                    mon_c.append(c)
            finally:
                monitor.stop()
            results[case] = {k: statistics.median(v) for k, v in (
                ("cs_verified", cs_v), ("cs_switched", cs_s), ("mon_verified", mon_v),
                ("mon_switched", mon_s), ("mon_created", mon_c))}
            for agent in agents:
                agent.stop()
                agent.read_stderr()
            agents.clear()
    finally:
        for agent in agents:
            agent.stop()
            agent.read_stderr()
        watcher.close()
        store.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"bundle {size / 2**20:.2f} MiB in {args.chunk_kib} KiB chunks, broker {args.broker}, "
          f"store {db.split(':')[0]}")
    print(f"{'case':<14}{'path':<22}{'verified s':>11}{'switched s':>11}{'ratio':>7}")
    for case, r in results.items():
        print(f"{case:<14}{'chunkserver':<22}{r['cs_verified']:>11.3f}{r['cs_switched']:>11.3f}"
              f"{1.0:>7.2f}")
        print(f"{'':<14}{'monitor (from send)':<22}{r['mon_verified']:>11.3f}"
              f"{r['mon_switched']:>11.3f}{r['mon_switched'] / r['cs_switched']:>7.2f}")
        print(f"{'':<14}{'monitor (from create)':<22}{'':>11}{r['mon_created']:>11.3f}"
              f"{r['mon_created'] / r['cs_switched']:>7.2f}")


if __name__ == "__main__":
    main()
