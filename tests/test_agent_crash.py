"""Power-loss style tests of ``edgeml agent``: kill -9 at each deploy step, and a full disk.

The agent is started with ``EDGEML_AGENT_PAUSE_AT=<state>``: right after the record of that
state is saved it prints ``agent: paused in <state>`` and stops working, and the test
kills it with SIGKILL. Restarted (without the variable), the agent must serve a valid model,
say which in its reports, and finish the deployment (commit it or roll it back) as the
resume table (edgeml.agent.machine.RESUME) says. ``make test`` runs each case once; the
``slow`` variant runs each five times.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_support import AgentProcess, Watcher, make_bundle

from edgeml.agent.chunkserver import ChunkServer
from edgeml.agent.machine import MAX_ATTEMPTS, RESUME

CHUNK = 64 * 1024

# (state to kill in, expected final event, version served afterwards)
KILL_TABLE = [
    ("downloading:2", "committed", 2),  # mid-transfer: resumes from the first missing chunk
    ("verifying", "committed", 2),  # after the transfer, during verify and self-test
    ("switching", "rolled_back", 1),  # the switch under way: never proved itself
    ("trial", "rolled_back", 1),  # on trial: rolled back before serving
    ("committing", "committed", 2),  # the commit finishes
]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("crash-bundles")
    return {"v1": make_bundle(out, 1), "v2": make_bundle(out, 2, pad=300 * 1024),
            "big": make_bundle(out, 3, pad=3 * 1024 * 1024)}


def test_the_table_covers_every_state_that_resumes() -> None:
    killed = {state.split(":")[0] for state, _, _ in KILL_TABLE}
    assert killed == {s for s in RESUME if s not in ("idle", "rolling_back", "failing")}


def _kill_and_restart(state: str, expected: str, version: int, tmp_path: Path, base: str,
                      watcher: Watcher, server: ChunkServer, bundles: dict[str, Path]) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / f"state-{device}"
    since = len(watcher.reports)
    agent = AgentProcess(folder, base, device, "--allow-unsigned", "--window", "1",
                         bundle=bundles["v1"], env={"EDGEML_AGENT_PAUSE_AT": state})
    try:
        watcher.wait("status", device=device, since=since)
        ident = f"dep-{uuid.uuid4().hex[:6]}"
        server.deploy("lab", device, ident, server.offer(bundles["v2"], CHUNK), soak_s=1.0)
        agent.wait_line(f"agent: paused in {state.split(':')[0]}", 60)
        agent.kill()
        agent.read_stderr()
        saved = json.loads((folder / "deploy.json").read_text())
        assert saved["state"] == state.split(":")[0]
        agent = AgentProcess(folder, base, device, "--allow-unsigned")
        # already serving a valid model, the one the resume table leads to (or the old one
        # while a resumed download or verification is still under way)
        first = agent.model()
        assert first[1] in (1, 2)
        done = watcher.wait(("committed", "rolled_back", "failed"), ident, 60)
        assert done["event"] == expected, done
        assert done["serving"]["version"] == version
        assert agent.model() == ("tiny", version)
        if expected == "rolled_back":
            assert "agent restarted" in done["reason"]
            assert first == ("tiny", 1)  # rolled back before serving
        pointer = json.loads((folder / "current").read_text())
        assert pointer["slot"] == ("b" if version == 2 else "a")
        assert json.loads((folder / "deploy.json").read_text())["state"] == "idle"
    finally:
        agent.stop()
        agent.read_stderr()


@pytest.mark.parametrize(("state", "expected", "version"), KILL_TABLE,
                         ids=[k[0] for k in KILL_TABLE])
def test_kill_9_at_each_step(state: str, expected: str, version: int, tmp_path: Path,
                             base: str, watcher: Watcher, server: ChunkServer,
                             bundles: dict[str, Path]) -> None:
    _kill_and_restart(state, expected, version, tmp_path, base, watcher, server, bundles)


@pytest.mark.slow
@pytest.mark.parametrize("run", range(5))
@pytest.mark.parametrize(("state", "expected", "version"), KILL_TABLE,
                         ids=[k[0] for k in KILL_TABLE])
def test_kill_9_at_each_step_five_times(state: str, expected: str, version: int, run: int,
                                        tmp_path: Path, base: str, watcher: Watcher,
                                        server: ChunkServer, bundles: dict[str, Path]) -> None:
    _kill_and_restart(state, expected, version, tmp_path, base, watcher, server, bundles)


def test_a_crash_loop_ends_at_the_attempt_cap(tmp_path: Path, base: str, watcher: Watcher,
                                              server: ChunkServer,
                                              bundles: dict[str, Path]) -> None:
    """Killed in verifying at every start: after MAX_ATTEMPTS restarts the deployment fails."""
    device = f"dev-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "state"
    pause = {"EDGEML_AGENT_PAUSE_AT": "verifying"}
    since = len(watcher.reports)
    agent = AgentProcess(folder, base, device, "--allow-unsigned", bundle=bundles["v1"],
                         env=pause)
    watcher.wait("status", device=device, since=since)
    server.deploy("lab", device, "dep-loop", server.offer(bundles["v2"], CHUNK), soak_s=0.2)
    for attempt in range(MAX_ATTEMPTS + 1):  # the first run, then each restart pauses again
        agent.wait_line("agent: paused in verifying", 60)
        agent.kill()
        agent.read_stderr()
        assert json.loads((folder / "deploy.json").read_text())["attempts"] == attempt
        agent = AgentProcess(folder, base, device, "--allow-unsigned", env=pause, wait=False)
    try:
        done = watcher.wait(("committed", "failed"), "dep-loop", 60)
        assert done["event"] == "failed", done
        assert done["reason"] == f"gave up after {MAX_ATTEMPTS} restarts in verifying"
        agent.url = agent.wait_line("http: ", 30).split("http: ", 1)[1].strip()
        assert agent.model() == ("tiny", 1)
    finally:
        agent.stop()
        agent.read_stderr()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1.5 MiB tmpfs mounted as the state folder (root only), unmounted afterwards."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    point = tmp_path / "disk"
    point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(point)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


def _used(path: Path) -> int:
    usage = shutil.disk_usage(path)
    return usage.total - usage.free


def test_full_disk_during_transfer(small_disk: Path, base: str, watcher: Watcher,
                                   server: ChunkServer, bundles: dict[str, Path]) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    agent = AgentProcess(small_disk, base, device, "--allow-unsigned", bundle=bundles["v1"])
    try:
        watcher.wait("status", device=device)
        before = _used(small_disk)
        server.deploy("lab", device, "dep-full", server.offer(bundles["big"], CHUNK), soak_s=0.2)
        done = watcher.wait(("committed", "failed", "rolled_back"), "dep-full", 60)
        assert done["event"] == "failed", done
        assert "No space left on device" in done["reason"], done["reason"]
        assert agent.model() == ("tiny", 1)
        assert done["serving"]["version"] == 1
        assert not list((small_disk / "slots/b").glob("download.*"))
        assert _used(small_disk) < before + 256 * 1024  # the partial download is gone
        assert json.loads((small_disk / "deploy.json").read_text())["state"] == "idle"
    finally:
        agent.stop()
        agent.read_stderr()
