"""Fleet deploys (issue #10 item 5): planning, report ingestion, the controller racing itself,
chunk answers from the database, the CLI, and one real agent driven by a real monitor.

Stores are real SQLite files and PostgreSQL schemas; reports have the agent's shape
(``edgeml.deploy-report/1``); the controller's commands are collected from its send seam
in the fast tests and go over the shared broker to a real agent process in the last one.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from agent_support import AgentProcess, Watcher, make_bundle, unique_base
from fleet_support import PG_URL, T0, Fleet, fresh_store, make_fleet_bundle
from sqlalchemy import func, select

from edgeml.agent.protocol import (
    REPORT_SCHEMA,
    BundleOffer,
    ChunkRequest,
    Command,
    ProtocolError,
    decode_chunk,
)
from edgeml.errors import BundleError, NotFoundError, UsageError
from edgeml.fleet.chunks import ChunkAnswers
from edgeml.fleet.deploys import (
    assign_stages,
    create_deployment,
    deployment_status,
    halt_deployment,
    parse_stages,
    resume_deployment,
    rollback_device,
)
from edgeml.fleet.rollout import MAX_ROLLBACK_SENDS, Controller, ingest_reports
from edgeml.fleet.schema import BundleBlob, DeployEvent, Deployment, Device

NOW = datetime(2026, 12, 2, 16, 45, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("deploy-bundles")
    return {"v1": make_bundle(out, 1), "v2": make_bundle(out, 2, pad=200 * 1024)}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    with fresh_store("sqlite" if request.param == "sqlite" else PG_URL, tmp_path) as s:
        yield s


def _devices(store: Any, fleet: str, names: list[str], version: int = 1) -> None:
    with store.session() as s:
        for name in names:
            s.add(Device(fleet=fleet, device=name, state="ready", model_name="tiny",
                         model_version=version, first_seen=NOW, last_seen=NOW))


class Sent:
    """The controller's send seam: what it published, per device."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, str, Command]] = []
        self._lock = threading.Lock()

    def __call__(self, fleet: str, device: str, cmd: Command) -> None:
        with self._lock:
            self.commands.append((fleet, device, cmd))

    def to(self, device: str, action: str | None = None) -> list[Command]:
        return [c for _f, d, c in self.commands if d == device and action in (None, c.action)]


class Agent:
    """Reports in the agent's shape (edgeml.agent.deployer) for one device."""

    def __init__(self, fleet: str, device: str) -> None:
        self.fleet, self.device, self.seq = fleet, device, 0

    def report(self, ident: str | None, event: str, version: int = 1, reason: str | None = None,
               progress: dict[str, int] | None = None) -> tuple[str, str, bytes]:
        seq = None
        if event != "status":
            self.seq += 1
            seq = self.seq
        body = {"schema": REPORT_SCHEMA, "id": ident, "device": self.device, "fleet": self.fleet,
                "seq": seq, "at": "2026-12-02T16:45:00.000Z", "event": event, "state": "idle",
                "reason": reason, "bundle": None, "progress": progress,
                "serving": {"slot": "a", "name": "tiny", "version": version, "sha256": None}}
        return self.fleet, self.device, json.dumps(body).encode()


def _rows(store: Any, ident: str) -> dict[str, dict[str, Any]]:
    return {r["device"]: r for r in deployment_status(store, ident)["devices"]}


def _walk(store: Any, ident: str, agent: Agent, events: list[str], version: int = 2) -> None:
    ingest_reports(store, [agent.report(ident, e, version if e in ("switched", "committed")
                                        else 1) for e in events])


# -- planning -------------------------------------------------------------------------------


def test_stages_parse_and_assign_deterministically() -> None:
    assert parse_stages("10%,50%,100%") == (0.1, 0.5, 1.0)
    assert parse_stages("0.25, 1") == (0.25, 1.0)
    for bad in ("50%,10%,100%", "10%,50%", "0%,100%", "ten,100%", "120%"):
        with pytest.raises(UsageError, match="--stages"):
            parse_stages(bad)
    devices = [f"d{i:02d}" for i in range(10)]
    plan = assign_stages(reversed(devices), (0.1, 0.5, 1.0))
    assert [d for d, _ in plan] == devices  # sorted: the same plan every time
    assert [sum(1 for _, k in plan if k == s) for s in range(3)] == [1, 4, 5]
    assert [k for _, k in assign_stages(["a"], (0.1, 0.5, 1.0))] == [0]  # the canary is never empty
    assert [k for _, k in assign_stages(["a", "b", "c"], (0.1, 0.5, 1.0))] == [0, 1, 2]
    assert [k for _, k in assign_stages(["a", "b", "c", "d"], (0.5, 1.0))] == [0, 0, 1, 1]


def test_create_stores_the_bundle_once_and_plans_the_fleet(store: Any,
                                                           bundles: dict[str, Path]) -> None:
    _devices(store, "lab", [f"n{i}" for i in range(10)])
    _devices(store, "other", ["x"])
    ident = create_deployment(store, bundles["v2"], "lab", stages=(0.1, 0.5, 1.0), soak_s=5,
                              gates={"max_psi": 0.3}, now=NOW)
    again = create_deployment(store, bundles["v2"], "lab", devices=["n3", "n1", "n1"], now=NOW)
    assert ident.startswith("d-20261202-164500-") and ident != again
    status = deployment_status(store, ident)
    assert (status["state"], status["stage"], status["model"], status["version"]) == \
        ("running", 0, "tiny", 2)
    assert status["gates"] == {"max_error_rate": 0.05, "max_p95_ratio": 3.0, "min_requests": 20,
                               "max_psi": 0.3}
    assert [(r["device"], r["stage"], r["state"], r["from_version"]) for r in status["devices"]][:2] \
        == [("n0", 0, "pending", 1), ("n1", 1, "pending", 1)]
    assert [r["stage"] for r in status["devices"]].count(2) == 5
    assert sorted(_rows(store, again)) == ["n1", "n3"]
    with store.session() as s:
        blobs = s.execute(select(BundleBlob.sha256, BundleBlob.size, BundleBlob.data)).all()
    data = bundles["v2"].read_bytes()
    assert [(b[0], b[1], bytes(b[2])) for b in blobs] == [
        (hashlib.sha256(data).hexdigest(), len(data), data)]  # one row for both deployments
    with pytest.raises(NotFoundError, match="no devices"):
        create_deployment(store, bundles["v2"], "empty")
    broken = bundles["v2"].parent / "broken.edgeml"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError):
        create_deployment(store, broken, "lab")


# -- the controller -------------------------------------------------------------------------


def test_two_controllers_race_and_the_rollout_advances_once(store: Any,
                                                            bundles: dict[str, Path]) -> None:
    devices = ["a", "b", "c", "d"]
    _devices(store, "lab", devices)
    ident = create_deployment(store, bundles["v2"], "lab", stages=(0.25, 1.0), soak_s=2, now=NOW)
    sent = Sent()
    barrier = threading.Barrier(2)

    class Racing(Controller):
        """Both decide from the same revision before either writes (a forced race)."""

        def _plan(self, *args: Any) -> Any:
            plan = super()._plan(*args)
            if not barrier.broken:
                barrier.wait(10)
            return plan

    controllers = [Racing(store, sent, settle_s=0.0) for _ in range(2)]
    threads = [threading.Thread(target=c.advance, args=(NOW + timedelta(seconds=1),))
               for c in controllers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    barrier.abort()
    assert sorted(c.lost for c in controllers) == [0, 1]  # one won the compare-and-set
    installs = sent.to("a", "install")
    assert len(installs) == 1, sent.commands  # racing passes sent it exactly once
    assert sent.to("b") == sent.to("c") == sent.to("d") == []  # later stage untouched
    cmd = installs[0]
    assert cmd.id == ident and cmd.soak_s == 2.0 and cmd.gates.max_error_rate == 0.05
    assert cmd.bundle is not None and cmd.bundle.version == 2 and cmd.bundle.count == 4
    assert _rows(store, ident)["a"]["sends"] == 1
    # the agent answers; the stage commits; both controllers go on racing
    _walk(store, ident, agent_a := Agent("lab", "a"), ["received", "verified", "switched"])
    assert _rows(store, ident)["a"]["state"] == "switched"
    _walk(store, ident, agent_a, ["committed"])
    row = _rows(store, ident)["a"]
    assert (row["state"], row["serving_version"]) == ("committed", 2) and row["committed_at"]
    for step in range(2, 5):
        for c in controllers:
            c.advance(NOW + timedelta(seconds=step))
    dep = deployment_status(store, ident)
    assert dep["stage"] == 1 and dep["state"] == "running"
    assert [len(sent.to(d, "install")) for d in devices] == [1, 1, 1, 1]
    for d in ("b", "c", "d"):
        _walk(store, ident, Agent("lab", d), ["received", "verified", "switched", "committed"])
    for step in range(5, 8):
        for c in controllers:
            c.advance(NOW + timedelta(seconds=step))
    dep = deployment_status(store, ident)
    assert dep["state"] == "completed" and {r["state"] for r in dep["devices"]} == {"committed"}
    with store.session() as s:
        events = s.scalar(select(func.count()).select_from(DeployEvent))
    assert events == 16


def test_canary_failure_halts_and_rolls_the_stage_back(store: Any,
                                                        bundles: dict[str, Path]) -> None:
    devices = [f"n{i}" for i in range(6)]
    _devices(store, "lab", devices)
    ident = create_deployment(store, bundles["v2"], "lab", stages=(0.34, 1.0), now=NOW)
    sent = Sent()
    ctl = Controller(store, sent, resend_s=10.0, settle_s=0.0)
    ctl.advance(NOW)
    stage0 = [d for d, r in _rows(store, ident).items() if r["stage"] == 0]
    assert stage0 == ["n0", "n1", "n2"]
    n0 = Agent("lab", "n0")
    _walk(store, ident, n0, ["received", "verified", "switched", "committed"])
    _walk(store, ident, Agent("lab", "n1"), ["received"])
    ingest_reports(store, [Agent("lab", "n2").report(ident, "rolled_back",
                                                     reason="error rate 0.40 > 0.05")])
    ctl.advance(NOW + timedelta(seconds=1))
    dep = deployment_status(store, ident)
    assert dep["state"] == "halted"
    assert dep["reason"] == "stage 1: n2 rolled back: error rate 0.40 > 0.05"
    rows = _rows(store, ident)
    assert [rows[d]["state"] for d in stage0] == ["rolling_back", "rolling_back", "rolled_back"]
    assert [c.action for c in sent.to("n0")] == ["install", "rollback"]
    assert [c.action for c in sent.to("n1")] == ["install", "rollback"]
    assert all(sent.to(d) == [] for d in devices[3:])  # the rest never touched
    assert all(rows[d]["state"] == "pending" and rows[d]["sends"] == 0 for d in devices[3:])
    # n0 answers; n1 stays silent: repeated after resend_s, given up after MAX_ROLLBACK_SENDS
    ingest_reports(store, [n0.report(ident, "rolled_back", reason="rolled back by the controller")])
    ctl.advance(NOW + timedelta(seconds=2))  # not due yet
    assert len(sent.to("n1", "rollback")) == 1
    for k in range(1, MAX_ROLLBACK_SENDS + 1):
        ctl.advance(NOW + timedelta(seconds=1 + 10 * k))
    rows = _rows(store, ident)
    assert rows["n0"]["state"] == "rolled_back" and len(sent.to("n0", "rollback")) == 1
    assert len(sent.to("n1", "rollback")) == MAX_ROLLBACK_SENDS
    assert rows["n1"]["state"] == "failed" and "no answer" in rows["n1"]["reason"]
    assert all(sent.to(d) == [] for d in devices[3:])


def test_status_report_makes_the_pending_command_due(store: Any,
                                                     bundles: dict[str, Path]) -> None:
    _devices(store, "lab", ["a"])
    ident = create_deployment(store, bundles["v2"], "lab", now=NOW)
    sent = Sent()
    ctl = Controller(store, sent, resend_s=60.0)
    ctl.advance(NOW)
    ctl.advance(NOW + timedelta(seconds=5))
    assert len(sent.to("a", "install")) == 1  # not due yet
    agent = Agent("lab", "a")
    ingest_reports(store, [agent.report(None, "status")])  # it (re)subscribed, idle
    ctl.advance(NOW + timedelta(seconds=6))
    assert len(sent.to("a", "install")) == 2 and _rows(store, ident)["a"]["sends"] == 2
    # a redelivered report changes nothing; progress is kept
    dup = agent.report(ident, "resumed", progress={"have": 2, "count": 4})
    assert ingest_reports(store, [dup, dup]) == {ident}
    assert ingest_reports(store, [dup]) == set()
    row = _rows(store, ident)["a"]
    assert (row["state"], row["have"], row["count"]) == ("downloading", 2, 4)
    ingest_reports(store, [("lab", "a", b"not json"), ("lab", "a", b'{"schema": "x"}')])
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(DeployEvent)) == 2


def test_halt_resume_and_rollback_of_a_device(store: Any, bundles: dict[str, Path]) -> None:
    _devices(store, "lab", ["a", "b"])
    ident = create_deployment(store, bundles["v2"], "lab", stages=(0.5, 1.0), now=NOW)
    sent = Sent()
    ctl = Controller(store, sent, settle_s=0.0)
    halt_deployment(store, ident)
    ctl.advance(NOW)
    assert sent.commands == []  # halted: nothing sent
    with pytest.raises(UsageError, match="not running"):
        halt_deployment(store, ident)
    resume_deployment(store, ident)
    ctl.advance(NOW)
    assert [d for _f, d, _c in sent.commands] == ["a"]
    ingest_reports(store, [Agent("lab", "a").report(ident, "failed", reason="disk full")])
    ctl.advance(NOW + timedelta(seconds=1))
    assert deployment_status(store, ident)["state"] == "halted"
    resume_deployment(store, ident)  # a is skipped, the stage (empty now) passes
    for k in range(2, 5):
        ctl.advance(NOW + timedelta(seconds=k))
    assert _rows(store, ident)["a"]["state"] == "skipped"
    assert len(sent.to("b", "install")) == 1
    b = Agent("lab", "b")
    _walk(store, ident, b, ["received", "verified", "switched", "committed"])
    for k in range(5, 8):
        ctl.advance(NOW + timedelta(seconds=k))
    assert deployment_status(store, ident)["state"] == "completed"
    with pytest.raises(NotFoundError, match="no committed deployment"):
        rollback_device(store, "a")
    asked = rollback_device(store, "b", "lab")
    assert asked["deployment"] == ident and asked["state"] == "rolling_back"
    ctl.advance(NOW + timedelta(seconds=9))
    assert [c.action for c in sent.to("b")] == ["install", "rollback"]
    ingest_reports(store, [b.report(ident, "rolled_back")])
    assert _rows(store, ident)["b"]["state"] == "rolled_back"
    assert deployment_status(store, ident)["state"] == "completed"  # the rollout itself is over


def test_fleet_side_gates_halt_on_psi_and_error_rate(tmp_path: Path) -> None:
    from edgeml.fleet.simspec import DriftSpec
    from edgeml.runtime.predictor import Predictor

    path, _man = make_fleet_bundle(tmp_path / "b", version=2)
    start = datetime.fromtimestamp(T0, timezone.utc)
    with fresh_store("sqlite", tmp_path) as store:
        fleet = Fleet(store, Predictor(path))
        for d in ("p1", "p2"):
            fleet.announce(d)
        psi = create_deployment(store, path, "plant", devices=["p1"], soak_s=1,
                                gates={"max_psi": 0.25}, now=start)
        errs = create_deployment(store, path, "plant", devices=["p2"], soak_s=1,
                                 gates={"max_error_rate": 0.1, "min_requests": 5}, now=start)
        for k in range(1, 4):
            fleet.window("p1", T0 + 10 * k, 200, drift=DriftSpec.parse("feature=temp,shift=+15"))
            fleet.window("p2", T0 + 10 * k, 50, errors=3)
        for ident, device in ((psi, "p1"), (errs, "p2")):
            _walk(store, ident, Agent("plant", device), ["received", "verified", "switched",
                                                         "committed"])
        ctl = Controller(store, Sent(), settle_s=0.0)
        for k in range(3):
            ctl.advance(start + timedelta(seconds=40 + k))
        p, e = deployment_status(store, psi), deployment_status(store, errs)
    assert p["state"] == "halted" and p["reason"].startswith("stage 1: PSI of ")
    assert e["state"] == "halted" and "fleet error rate" in e["reason"]
    assert _rows_of(p)["p1"]["state"] == _rows_of(e)["p2"]["state"] == "rolling_back"


def _rows_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["device"]: r for r in status["devices"]}


# -- chunk answers --------------------------------------------------------------------------


def test_chunks_are_answered_from_the_database(store: Any, bundles: dict[str, Path]) -> None:
    _devices(store, "lab", ["a"])
    create_deployment(store, bundles["v2"], "lab", now=NOW)
    create_deployment(store, bundles["v1"], "lab", now=NOW)
    data = bundles["v2"].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    answers = ChunkAnswers(store, max_bytes=len(data) + 10)
    for chunk_size in (64 * 1024, 1024 * 100):
        offer = BundleOffer(sha, len(data), chunk_size)
        got = {}
        for first in range(0, offer.count, 3):
            req = ChunkRequest("d", sha, chunk_size, tuple(range(first, min(first + 3, offer.count))))
            for payload in answers.answer(req):
                chunk = decode_chunk(payload, offer)  # the agent's own check
                got[chunk.index] = chunk.data
        assert b"".join(got[i] for i in range(offer.count)) == data
    assert answers.loads == 1  # read from the database once
    v1 = hashlib.sha256(bundles["v1"].read_bytes()).hexdigest()
    answers.answer(ChunkRequest("d", v1, 64 * 1024, (0,)))
    answers.answer(ChunkRequest("d", sha, 64 * 1024, (0,)))
    assert answers.loads == 3  # the LRU holds one of them at this size
    unknown = ChunkRequest("d", "0" * 64, 64 * 1024, (0,))
    [refusal] = answers.answer(unknown)
    with pytest.raises(ProtocolError, match="the source refused: bundle not stored"):
        decode_chunk(refusal, BundleOffer("0" * 64, 10, 64 * 1024))


# -- the CLI --------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from edgeml.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_cli_deploy_status_halt_resume_rollback(tmp_path: Path, bundles: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with fresh_store("sqlite", tmp_path) as store:
        _devices(store, "lab", [f"n{i}" for i in range(4)])
        db = store.url
        code, out, err = _cli(capsys, "deploy", str(bundles["v2"]), "--fleet", "lab",
                              "--stages", "25%,100%", "--soak", "3", "--max-psi", "0.2",
                              "--db", db)
        assert code == 0, err
        ident = out.strip()
        assert ident.startswith("d-") and "tiny@2 to 4 devices of lab, stages: 1, 3" in err
        code, out, _ = _cli(capsys, "deploy", "status", ident, "--db", db, "--json")
        status = json.loads(out)
        assert status["state"] == "running" and status["soak_s"] == 3.0
        assert status["gates"]["max_psi"] == 0.2 and len(status["devices"]) == 4
        code, out, _ = _cli(capsys, "deploy", "status", ident, "--db", db)
        assert code == 0 and "n0" in out and "pending" in out and ident in out
        code, out, _ = _cli(capsys, "deploy", "status", "--db", db)
        assert code == 0 and ident in out and "pending 4" in out
        assert _cli(capsys, "deploy", "halt", ident, "--db", db)[:2] == (0, f"{ident}: halted\n")
        with store.session() as s:
            assert s.get(Deployment, ident).state == "halted"  # type: ignore[union-attr]
        code, _out, err = _cli(capsys, "deploy", "halt", ident, "--db", db)
        assert code == 2 and err == f"error: deployment {ident} is halted, not running\n"
        assert _cli(capsys, "deploy", "resume", ident, "--db", db)[0] == 0
        code, _out, err = _cli(capsys, "rollback", "--device", "n0", "--db", db)
        assert code == 2 and "has no committed deployment" in err
        code, _out, err = _cli(capsys, "deploy", "status", "d-nope", "--db", db)
        assert code == 2 and err == "error: no deployment 'd-nope'\n"
        code, _out, err = _cli(capsys, "deploy", str(bundles["v2"]), "--fleet", "lab",
                               "--stages", "50%", "--db", db)
        assert code == 2 and "last stage must be 100%" in err


# -- end to end: a real agent, a real monitor ---------------------------------------------------


def test_monitor_deploys_to_a_real_agent(tmp_path: Path, bundles: dict[str, Path]) -> None:
    """The monitor answers the chunks from the database, sends the command, stores the
    reports and completes the rollout; the agent serves v2."""
    from edgeml.fleet.monitor import Monitor, MonitorSettings

    base, device = unique_base(), f"dev-{uuid.uuid4().hex[:6]}"
    watcher = Watcher(base)
    with fresh_store("sqlite", tmp_path) as store:
        monitor = Monitor(MonitorSettings("mqtt://127.0.0.1:1883", store.url, base_topic=base,
                                          group=f"g{uuid.uuid4().hex[:6]}",
                                          client_id=f"mon-{uuid.uuid4().hex[:6]}"), store)
        agent = AgentProcess(tmp_path / "state", base, device, "--allow-unsigned",
                             bundle=bundles["v1"])
        try:
            monitor.start()
            assert monitor.wait_subscribed(15)
            watcher.wait("status", device=device, timeout=30)
            ident = create_deployment(store, bundles["v2"], "lab", devices=[device], soak_s=1.0)
            deadline = time.monotonic() + 90
            while deployment_status(store, ident)["state"] == "running":
                assert time.monotonic() < deadline, deployment_status(store, ident)
                time.sleep(0.3)
            status = deployment_status(store, ident)
            assert status["state"] == "completed", status
            row = status["devices"][0]
            assert (row["state"], row["serving_version"], row["have"], row["count"]) == \
                ("committed", 2, 4, 4)
            assert agent.model() == ("tiny", 2)
            assert watcher.events(ident) == ["received", "verified", "switched", "committed"]
            assert monitor.deploys.chunks.chunks_sent >= 4
            with store.session() as s:
                stored = [e for (e,) in s.execute(select(DeployEvent.event).where(
                    DeployEvent.deployment_id == ident).order_by(DeployEvent.seq))]
            assert stored == ["received", "verified", "switched", "committed"]
            # after the commit: `edgeml rollback --device` (marked here, sent by the monitor)
            rollback_device(store, device)
            deadline = time.monotonic() + 60
            while _rows(store, ident)[device]["state"] == "rolling_back":
                assert time.monotonic() < deadline, _rows(store, ident)
                time.sleep(0.3)
            row = _rows(store, ident)[device]
            assert (row["state"], row["serving_version"]) == ("rolled_back", 1), row
            assert agent.model() == ("tiny", 1)
        finally:
            agent.stop()
            agent.read_stderr()
            monitor.stop()
            watcher.close()
