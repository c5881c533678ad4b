"""Issue #10 "must show": a staged rollout to 10 real agent processes, driven by a real
``edgeml monitor`` process on PostgreSQL, started with the real ``edgeml deploy`` command.

1. v2 goes out with stages 10%,50%,100%; the canary (1 device) gets failing requests during
   its trial, its agent rolls back: the deployment is halted, the canary serves v1 again, the
   other 9 devices never received anything (no report, no command, still v1).
2. v3 (good) goes to 100%: every device commits and serves v3.

Asserted from the fleet database, from the deploy reports on the broker and from each
agent's HTTP answers and ``$info``.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _fleet_support import edgeml_json, start_monitor, store_url, wait_until
from agent_support import BROKER, ROW, AgentProcess, Watcher, make_bundle, unique_base

from edgeml.fleet.db import open_store
from edgeml.fleet.deploys import deployment_status
from edgeml.fleet.migrate import upgrade
from edgeml.fleet.schema import Device

pytestmark = pytest.mark.slow

N = 10


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    with store_url("postgresql", tmp_path) as url:
        upgrade(url)
        yield url


def _deploy(db: str, bundle: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "edgeml", "deploy", str(bundle), "--fleet", "lab",
                           "--db", db, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def _wait_state(store: Any, ident: str, done: tuple[str, ...], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = deployment_status(store, ident)
        if status["state"] in done:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def test_canary_fails_and_halts_then_a_good_model_reaches_everyone(db: str,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "bundles"
    v1, v2, v3 = (make_bundle(out, v, pad=100 * 1024 * (v - 1)) for v in (1, 2, 3))
    base = unique_base()
    watcher = Watcher(base)
    monitor = start_monitor(BROKER, db, base, f"mon-{uuid.uuid4().hex[:6]}",
                            "--group", f"g{uuid.uuid4().hex[:6]}")
    store = open_store(db)
    agents: dict[str, AgentProcess] = {}
    try:
        names = [f"dev-{i:02d}" for i in range(N)]
        for name in names:
            agents[name] = AgentProcess(tmp_path / name, base, name, "--allow-unsigned",
                                        bundle=v1)
        for name in names:
            watcher.wait("status", device=name, timeout=60)

        def seen() -> int:
            with store.session() as s:
                return len(s.query(Device).filter(Device.fleet == "lab",
                                                  Device.model_version == 1).all())

        wait_until(lambda: seen() == N, 60, "the monitor to record the 10 devices")

        # 1. the canary fails its trial: halted, rolled back, the rest never touched
        bad = _deploy(db, v2, "--stages", "10%,50%,100%", "--soak", "4", "--min-requests", "10")
        rows = {r["device"]: r for r in deployment_status(store, bad)["devices"]}
        assert [n for n, r in rows.items() if r["stage"] == 0] == ["dev-00"]
        canary = agents["dev-00"]
        watcher.wait("switched", bad, timeout=90, device="dev-00")
        assert canary.model() == ("tiny", 2)
        missing_mode = {k: v for k, v in ROW.items() if k != "mode"}
        errors = 0
        for _ in range(20):
            try:
                canary.predict([missing_mode])
            except Exception:  # urllib's HTTPError for the 400: what this step produces
                errors += 1
        assert errors == 20
        status = _wait_state(store, bad, ("halted", "completed"), 90)
        assert status["state"] == "halted", status
        assert status["reason"].startswith("stage 1: dev-00 rolled back: "), status["reason"]
        assert "error rate" in status["reason"]
        rows = {r["device"]: r for r in status["devices"]}
        assert rows["dev-00"]["state"] == "rolled_back" and rows["dev-00"]["serving_version"] == 1
        assert canary.model() == ("tiny", 1)
        time.sleep(3)  # a controller pass or three: still nothing for the others
        rows = {r["device"]: r for r in deployment_status(store, bad)["devices"]}
        for name in names[1:]:
            assert (rows[name]["state"], rows[name]["sends"]) == ("pending", 0), rows[name]
            assert agents[name].model() == ("tiny", 1)
        assert {r["device"] for r in watcher.reports if r["id"] == bad} == {"dev-00"}
        assert watcher.events(bad) == ["received", "verified", "switched", "rolled_back"]

        # 2. a good model to 100%, in three stages
        good = _deploy(db, v3, "--stages", "10%,50%,100%", "--soak", "1")
        status = _wait_state(store, good, ("halted", "completed"), 240)
        assert status["state"] == "completed", status
        assert [r["state"] for r in status["devices"]] == ["committed"] * N
        assert [r["serving_version"] for r in status["devices"]] == [3] * N
        assert sorted({r["stage"] for r in status["devices"]}) == [0, 1, 2]
        for name in names:
            assert agents[name].model() == ("tiny", 3)
        wait_until(lambda: {i["device"] for i in watcher.infos
                            if i.get("model", {}).get("version") == 3} >= set(names), 30,
                   "$info with v3 from every device")
        shown = edgeml_json("deploy", "status", good, "--db", db)
        assert shown["state"] == "completed" and len(shown["devices"]) == N
        listed = edgeml_json("deploy", "status", "--db", db)
        assert [d["state"] for d in listed[:2]] == ["completed", "halted"]
    finally:
        for agent in agents.values():
            agent.stop()
            agent.read_stderr()
        watcher.close()
        monitor.terminate()
        store.dispose()
        print(monitor.output()[-3000:])
