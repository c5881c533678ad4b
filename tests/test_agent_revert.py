"""``rollback`` of a deployment that already committed: real agent processes, the real broker.

The controller (``edgeml rollback --device``, a halted rollout) sends ``{"action":
"rollback", "id": D}`` to an idle agent whose last committed deployment is D: it goes back to
the slot D replaced without failing a request, or says why there is nothing to roll back.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_support import ROW, AgentProcess, Watcher, make_bundle

from edgeml.agent import machine as m
from edgeml.agent.chunkserver import ChunkServer
from edgeml.agent.protocol import Command

CHUNK = 64 * 1024
AFTER_COMMIT = "rolled back by the controller after commit"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("revert-bundles")
    return {"v1": make_bundle(out, 1), "v2": make_bundle(out, 2, pad=100 * 1024),
            "v3": make_bundle(out, 3, pad=50 * 1024)}


def _install(server: ChunkServer, watcher: Watcher, device: str, ident: str,
             bundle: Path) -> dict[str, Any]:
    since = len(watcher.reports)
    server.deploy("lab", device, ident, server.offer(bundle, CHUNK), soak_s=0.3)
    done = watcher.wait(("committed", "failed", "rolled_back"), ident, 60, since=since)
    assert done["event"] == "committed", done
    return done


def _rollback(server: ChunkServer, watcher: Watcher, device: str, ident: str) -> dict[str, Any]:
    since = len(watcher.reports)
    server.send("lab", device, Command(ident, "rollback"))
    return watcher.wait(("rolled_back", "failed", "committed"), ident, 30, since=since)


def test_transition_and_an_old_record_without_committed(tmp_path: Path) -> None:
    assert m.next_state("idle", "revert") == "rolling_back"
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps({"state": "idle", "last": None}))  # written before the field
    assert m.load_record(path).committed is None


def test_rollback_after_commit(start_agent: Callable[..., AgentProcess], watcher: Watcher,
                               server: ChunkServer, device: str, bundles: dict[str, Path],
                               tmp_path: Path) -> None:
    agent = start_agent("--allow-unsigned", "--workers", "2", bundle=bundles["v1"])
    state = tmp_path / "state"
    nothing = _rollback(server, watcher, device, "dep-1")  # nothing committed yet
    assert nothing["event"] == "failed", nothing
    assert nothing["reason"] == "nothing to roll back: no committed deployment dep-1 on this device"
    _install(server, watcher, device, "dep-1", bundles["v2"])
    assert agent.model() == ("tiny", 2)

    # a keep-alive client keeps predicting through the revert: no request fails
    host, port = agent.url.removeprefix("http://").rsplit(":", 1)
    stop = threading.Event()
    seen: dict[int, int] = {1: 0, 2: 0}
    failures: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        body = json.dumps({"instances": [ROW]})
        while not stop.is_set():
            try:
                conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    failures.append(f"{resp.status} {data[:100]!r}")
                    continue
                seen[int(json.loads(data)["model"]["version"])] += 1
            except Exception as exc:  # a failed request is what this test counts
                failures.append(repr(exc))
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.close()

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(0.5)
        done = _rollback(server, watcher, device, "dep-1")
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(20)
    assert done["event"] == "rolled_back", done
    assert done["reason"] == AFTER_COMMIT
    assert done["state"] == "idle"
    assert done["serving"]["slot"] == "a" and done["serving"]["version"] == 1
    assert done["bundle"]["version"] == 2  # the deployment rolled back
    assert failures == [] and seen[1] > 0 and seen[2] > 0, (failures, seen)
    assert agent.model() == ("tiny", 1)
    deadline = time.monotonic() + 10  # $info says v1 again
    while not (watcher.infos and watcher.infos[-1].get("model", {}).get("version") == 1):
        assert time.monotonic() < deadline, watcher.infos[-3:]
        time.sleep(0.1)
    assert json.loads((state / "current").read_text()) == {"slot": "a", "previous": None}
    left = json.loads((state / "slots/b/slot.json").read_text())
    assert left["status"] == "bad" and left["reason"] == AFTER_COMMIT
    assert not (state / "slots/b/bundle.edgeml").exists()
    assert json.loads((state / "deploy.json").read_text())["state"] == "idle"

    again = _rollback(server, watcher, device, "dep-1")  # idempotent: the same answer
    assert {k: again[k] for k in ("event", "reason", "serving", "bundle")} == \
        {k: done[k] for k in ("event", "reason", "serving", "bundle")}
    assert again["seq"] > done["seq"]

    # a later deployment commits: the earlier one is no longer the one to roll back
    _install(server, watcher, device, "dep-3", bundles["v3"])
    old = _rollback(server, watcher, device, "dep-1")
    assert old["event"] == "failed", old
    assert old["reason"] == ("nothing to roll back: deployment dep-1 is not the last "
                             "committed one (dep-3 is)")
    assert old["serving"]["version"] == 3 and agent.model() == ("tiny", 3)
    # the previous slot lost its bundle's bytes: refused, nothing changes
    with open(state / "slots/a/bundle.edgeml", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\0" * 8)
    bad = _rollback(server, watcher, device, "dep-3")
    assert bad["event"] == "failed"
    assert bad["reason"] == ("nothing to roll back: the previous slot a does not hold its "
                             "bundle (sha256 differs)")
    assert bad["serving"]["version"] == 3 and agent.model() == ("tiny", 3)
    assert json.loads((state / "current").read_text()) == {"slot": "b", "previous": "a"}


@pytest.mark.slow
def test_kill_9_during_the_revert_finishes_it(start_agent: Callable[..., AgentProcess],
                                              watcher: Watcher, server: ChunkServer,
                                              device: str, bundles: dict[str, Path],
                                              tmp_path: Path) -> None:
    agent = start_agent("--allow-unsigned", bundle=bundles["v1"],
                        env={"EDGEML_AGENT_PAUSE_AT": "rolling_back"})
    _install(server, watcher, device, "dep-k", bundles["v2"])
    server.send("lab", device, Command("dep-k", "rollback"))
    agent.wait_line("agent: paused in rolling_back", 30)
    agent.kill()
    state = tmp_path / "state"
    saved = json.loads((state / "deploy.json").read_text())
    assert saved["state"] == "rolling_back" and saved["reason"] == AFTER_COMMIT
    assert saved["from_slot"] == "a" and saved["to_slot"] == "b"
    agent = start_agent("--allow-unsigned", wait_status=False)
    assert agent.model() == ("tiny", 1)  # finished before serving
    done = watcher.wait(("rolled_back", "failed"), "dep-k", 30)
    assert done["event"] == "rolled_back", done
    assert done["reason"] == AFTER_COMMIT and done["serving"]["version"] == 1
    assert json.loads((state / "current").read_text())["slot"] == "a"
    assert json.loads((state / "deploy.json").read_text())["state"] == "idle"
