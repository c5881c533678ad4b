"""The monitor's automatic retraining trigger (edgeml.fleet.retrain_trigger).

Alerts are opened by the fleet's own :func:`edgeml.fleet.alerts.reconcile`, labels arrive as
``edgeml.feedback/1`` payloads through ingest + writer (``tests/test_retrain.py``'s devices),
and the trigger starts a real ``python -m edgeml retrain`` process. Runs on SQLite and on the
machine's PostgreSQL (a fresh database per test: the retrain process opens it by URL).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from _fleet_support import store_url
from sqlalchemy import insert, select
from test_retrain import NAME, Devices, _recipe

from edgeml.cli import main
from edgeml.errors import UsageError
from edgeml.fleet.alerts import Condition, reconcile
from edgeml.fleet.db import open_store
from edgeml.fleet.migrate import upgrade
from edgeml.fleet.monitor import Monitor, MonitorSettings
from edgeml.fleet.retrain_trigger import RetrainConfig, RetrainRule, RetrainTrigger
from edgeml.fleet.schema import RetrainRun
from edgeml.fleet.thresholds import load_thresholds

KINDS = ["sqlite", "postgresql"]


@contextmanager
def _store(kind: str, tmp_path: Path) -> Iterator[Any]:
    with store_url(kind, tmp_path) as url:
        upgrade(url)
        store = open_store(url)
        try:
            yield store
        finally:
            store.dispose()


@pytest.fixture(params=KINDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SimpleNamespace]:
    recipe = _recipe(tmp_path)  # the recipe of model "shift"; its registry is still empty
    with _store(request.param, tmp_path) as store:
        yield SimpleNamespace(store=store, url=store.url, recipe=recipe, tmp=tmp_path,
                              devices=Devices(store), kind=request.param)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _open_alert(store: Any, kind: str = "decay", model: str = NAME,
                opened: datetime | None = None) -> int:
    cond = Condition(kind=kind, fleet="plant", device=None, model=model, version=1,
                     feature="accuracy" if kind == "decay" else "x1", value=0.4, threshold=0.8,
                     message=f"{kind} of {model}@1")
    with store.session() as s:
        opened_rows, _, _ = reconcile(s, opened or _now(), [cond], set())
    return opened_rows[0].id


def _labels(world: SimpleNamespace, n: int, seed: int = 1) -> None:
    world.devices.field_rows(n, x1=(10, 20), seed=seed)


def _trigger(world: SimpleNamespace, *, host: str | None = None, **rule: Any) -> RetrainTrigger:
    spec: dict[str, Any] = {"model": NAME, "recipe": world.recipe, "min_labels": 5,
                            "delay_s": 600.0, "cooldown_s": 3600.0,
                            "registry": world.tmp / "registry", **rule}
    return RetrainTrigger(RetrainConfig({NAME: RetrainRule(**spec)}, world.tmp / "logs"),
                          world.url, host=host)


def _runs(store: Any) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(RetrainRun.__table__).order_by(RetrainRun.id)).mappings())


def _settle(trigger: RetrainTrigger, store: Any, timeout: float = 120.0) -> list[Any]:
    """Reap until no run of this trigger's host is running (the retrain process ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trigger.reap(store)
        rows = _runs(store)
        if not [r for r in rows if r["state"] == "running" and r["host"] == trigger.host]:
            for child in list(trigger.children.values()):  # it may finish its row, then exit
                child.process.wait(max(1.0, deadline - time.monotonic()))
            trigger.reap(store)
            assert trigger.children == {}
            return _runs(store)
        time.sleep(0.3)
    raise AssertionError(f"the retraining did not finish in {timeout} s: {_runs(store)}")


def test_an_alert_open_past_the_delay_with_enough_labels_starts_one_retraining(
        world: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    alert_id = _open_alert(world.store, opened=_now() - timedelta(minutes=20))
    _labels(world, 8)
    trigger = _trigger(world)

    (run_id,) = trigger.tick(world.store)
    (row,) = _runs(world.store)
    assert (row["id"], row["state"], row["trigger"], row["alert_id"]) == \
        (run_id, "running", "decay", alert_id)
    assert row["model_name"] == NAME and row["host"] == trigger.host and row["pid"] > 0
    assert trigger.tick(world.store) == []  # running: never a second one

    # the registry has no model "shift": the real retrain command fails and says so
    (row,) = _settle(trigger, world.store)
    log = world.tmp / "logs" / f"{NAME}-{run_id}.log"
    assert row["state"] == "failed" and row["finished_at"] is not None
    assert f"no model '{NAME}' in registry" in row["reason"] or \
        row["reason"] == f"process exited with code 2 (output: {log})"
    assert f"error: no model '{NAME}' in registry" in log.read_text()

    # users see it: edgeml fleet retrains
    with pytest.raises(SystemExit) as exc:
        main(["fleet", "retrains", "--db", world.url, "--json"])
    assert exc.value.code == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["model"], shown["state"], shown["trigger"]) == \
        (run_id, NAME, "failed", "decay")
    assert shown["reason"] == row["reason"]


def test_a_process_that_exits_without_finishing_its_row_is_reaped(world: SimpleNamespace) -> None:
    _open_alert(world.store, kind="drift", opened=_now() - timedelta(hours=1))
    _labels(world, 6)
    trigger = _trigger(world, args=("--no-such-option",))  # click refuses it: exit 2, row untouched
    (run_id,) = trigger.tick(world.store)
    (row,) = _settle(trigger, world.store)
    log = world.tmp / "logs" / f"{NAME}-{run_id}.log"
    assert (row["state"], row["trigger"]) == ("failed", "drift")
    assert row["reason"] == f"process exited with code 2 (output: {log})"
    assert "No such option '--no-such-option'" in log.read_text()


def test_nothing_starts_before_the_delay_with_too_few_labels_or_a_resolved_alert(
        world: SimpleNamespace) -> None:
    _open_alert(world.store, opened=_now() - timedelta(minutes=5))
    _open_alert(world.store, kind="error_rate", opened=_now() - timedelta(hours=2))
    _labels(world, 8)
    assert _trigger(world, delay_s=600.0).tick(world.store) == []  # open 5 min of 10
    assert _trigger(world, delay_s=60.0, min_labels=9).tick(world.store) == []  # 8 labels of 9
    assert _trigger(world, delay_s=60.0, alerts=("drift",)).tick(world.store) == []  # decay only
    assert _runs(world.store) == []
    # another model's alert does not count either
    _open_alert(world.store, kind="drift", model="other", opened=_now() - timedelta(hours=2))
    assert _trigger(world, delay_s=60.0, min_labels=9).tick(world.store) == []
    assert _runs(world.store) == []


def _finished_run(store: Any, started: datetime, finished: datetime) -> None:
    with store.engine.begin() as conn:
        conn.execute(insert(RetrainRun).values(
            model_name=NAME, state="rejected", trigger="decay", started_at=started,
            finished_at=finished, reason="not better on the field holdout"))


def test_cool_down_and_labels_since_the_last_run(world: SimpleNamespace) -> None:
    _open_alert(world.store, opened=_now() - timedelta(hours=2))
    _labels(world, 6)
    # the last run started after these labels arrived: none of them is new
    last = _now()
    _finished_run(world.store, last, last + timedelta(seconds=1))
    later = _now() + timedelta(hours=3)  # past any cool-down
    assert _trigger(world, cooldown_s=60.0).tick(world.store, later) == []
    time.sleep(0.01)
    _labels(world, 6, seed=2)  # 6 new ones
    # within the cool-down (the last run finished 10 minutes "ago")
    soon = _now() + timedelta(minutes=10)
    assert _trigger(world, cooldown_s=3600.0).tick(world.store, soon) == []
    trigger = _trigger(world, cooldown_s=300.0)
    assert len(trigger.tick(world.store, soon)) == 1
    rows = _settle(trigger, world.store)
    assert [r["state"] for r in rows] == ["rejected", "failed"]


def test_the_reaper_fails_runs_whose_process_is_gone_on_this_host_only(
        world: SimpleNamespace) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    trigger = _trigger(world, host="host-a")
    with world.store.engine.begin() as conn:
        for host in ("host-a", "host-b"):
            conn.execute(insert(RetrainRun).values(
                model_name=f"m-{host}", state="running", trigger="drift", host=host,
                pid=gone.pid, started_at=_now()))
    (reaped,) = trigger.reap(world.store)
    rows = {r["host"]: r for r in _runs(world.store)}
    assert rows["host-a"]["id"] == reaped
    assert rows["host-a"]["state"] == "failed" and rows["host-a"]["reason"] == "process disappeared"
    assert rows["host-b"]["state"] == "running"  # another machine's process: not ours to judge


def test_two_triggers_racing_start_one_run(tmp_path: Path) -> None:
    """Two monitors (two hosts) tick at the same moment on PostgreSQL: one row, one process."""
    recipe = _recipe(tmp_path)
    with _store("postgresql", tmp_path) as store:
        world = SimpleNamespace(store=store, url=store.url, recipe=recipe, tmp=tmp_path,
                                devices=Devices(store))
        _open_alert(store, kind="drift", opened=_now() - timedelta(hours=1))
        _labels(world, 6)
        for attempt in range(1):  # one round of the race (raise it to race more)
            triggers = [_trigger(world, host=f"monitor-{i}", cooldown_s=0.0) for i in range(2)]
            barrier = threading.Barrier(2)
            started: list[list[int]] = [[], []]

            def race(i: int, triggers: list[RetrainTrigger] = triggers,
                     started: list[list[int]] = started,
                     barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                started[i] = triggers[i].tick(store)

            threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert sorted(len(s) for s in started) == [0, 1], started
            running = [r for r in _runs(store) if r["state"] == "running"]
            assert len(running) == 1
            winner = triggers[0] if started[0] else triggers[1]
            _settle(winner, store)
            _labels(world, 6, seed=10 + attempt)  # new labels for the next round
        assert [r["state"] for r in _runs(store)] == ["failed"]


def test_a_lost_race_for_the_one_running_row_starts_nothing(world: SimpleNamespace) -> None:
    """Both monitors judged the model due; the second insert hits the partial unique index."""
    _open_alert(world.store, kind="drift", opened=_now() - timedelta(hours=1))
    _labels(world, 6)
    first, second = _trigger(world, host="monitor-a"), _trigger(world, host="monitor-b")
    seen = second.due(world.store, second.config.rules[NAME], _now())
    assert seen is not None  # what monitor-b saw before monitor-a inserted its row

    class Late(RetrainTrigger):
        def due(self, store: Any, rule: RetrainRule, now: datetime) -> Any:
            return seen

    late = Late(second.config, world.url, host="monitor-b")
    assert len(first.tick(world.store)) == 1
    assert late.tick(world.store) == []  # IntegrityError: skipped, no process started
    assert late.children == {}
    assert [r["host"] for r in _runs(world.store)] == ["monitor-a"]
    _settle(first, world.store)


def test_the_retrain_section_is_validated_and_wired_into_the_monitor(tmp_path: Path) -> None:
    path = tmp_path / "th.yaml"
    path.write_text(yaml.safe_dump({"retrain": {"models": {NAME: {
        "recipe": "models/shift.yaml", "registry": "reg", "min_labels": 40, "delay": "15m",
        "cooldown": "12h", "alerts": ["decay"], "args": ["--field-weight", 2]}}}}))
    config = load_thresholds(path).retrain
    assert config is not None and config.logs == tmp_path / "retrain-logs"
    rule = config.rules[NAME]
    assert (rule.recipe, rule.registry, rule.min_labels) == (
        tmp_path / "models/shift.yaml", tmp_path / "reg", 40)
    assert (rule.delay_s, rule.cooldown_s, rule.alerts, rule.args) == (
        900.0, 43200.0, ("decay",), ("--field-weight", "2"))
    trigger = RetrainTrigger(config, "postgresql+psycopg://u:secret@db/fleet")
    cmd, env = trigger.command(rule, 7)
    assert cmd[1:] == ["-m", "edgeml", "retrain", str(tmp_path / "models/shift.yaml"),
                       "--run-id", "7", "--min-labels", "40", "--registry", str(tmp_path / "reg"),
                       "--field-weight", "2"]
    assert "secret" not in " ".join(cmd) and env["EDGEML_FLEET_DB"].endswith("u:secret@db/fleet")

    for bad, words in [
        ({"models": {NAME: {"min_labels": 3}}}, f"retrain.models.{NAME}.recipe: required"),
        ({"models": {NAME: {"recipe": "r.yaml", "min_labels": 0}}},
         f"retrain.models.{NAME}.min_labels: expected a count >= 1"),
        ({"models": {NAME: {"recipe": "r.yaml", "delay": "soon"}}},
         f"retrain.models.{NAME}.delay: 'soon' is not a duration"),
        ({"models": {NAME: {"recipe": "r.yaml", "alerts": ["error_rate"]}}},
         f"retrain.models.{NAME}.alerts: expected a list of decay and drift"),
        ({"models": {NAME: {"recipe": "r.yaml", "args": ["--db", "x"]}}},
         f"retrain.models.{NAME}.args: --db is set by the trigger"),
        ({"models": {NAME: {"recipe": "r.yaml", "cool": "1h"}}},
         f"retrain.models.{NAME}.cool: unknown key"),
        ({"model": {}}, "retrain.model: unknown key"),
    ]:
        path.write_text(yaml.safe_dump({"retrain": bad}))
        with pytest.raises(UsageError) as exc:
            load_thresholds(path)
        assert str(exc.value).startswith(f"{path}: {words}"), str(exc.value)

    # the monitor runs the trigger as a task when it evaluates with such a file
    path.write_text(yaml.safe_dump({"retrain": {"interval": "5s", "models": {
        NAME: {"recipe": "shift.yaml"}}}}))
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    upgrade(db)
    names = {name for _, _, name in Monitor(MonitorSettings(
        broker="mqtt://127.0.0.1:1883", db=db, evaluate_every=5.0, thresholds=str(path)))._tasks}
    assert {"evaluate", "retrain"} <= names
    plain = {name for _, _, name in Monitor(MonitorSettings(
        broker="mqtt://127.0.0.1:1883", db=db, evaluate_every=5.0))._tasks}
    assert "retrain" not in plain


@pytest.mark.slow
def test_a_triggered_retraining_registers_a_challenger(tmp_path: Path) -> None:
    """The whole trigger with the real retraining: v1 trained, field rows under a new rule."""
    from edgeml.train.registry import Registry
    from edgeml.train.workflow import train

    recipe = _recipe(tmp_path)
    train(recipe, registry=tmp_path / "registry")
    with _store("sqlite", tmp_path) as store:
        world = SimpleNamespace(store=store, url=store.url, recipe=recipe, tmp=tmp_path,
                                devices=Devices(store))
        alert_id = _open_alert(store, opened=_now() - timedelta(hours=1))
        _labels(world, 160)
        trigger = _trigger(world, min_labels=100, args=("--field-weight", "2", "--margin", "0.05"))
        (run_id,) = trigger.tick(store)
        (row,) = _settle(trigger, store, timeout=400)
        log = (tmp_path / "logs" / f"{NAME}-{run_id}.log").read_text()
        assert row["state"] == "registered", (row["reason"], log)
        assert (row["alert_id"], row["version"], row["trigger"]) == (alert_id, 2, "decay")
        assert Registry(tmp_path / "registry").aliases(NAME) == {"champion": 1, "challenger": 2}
    shutil.rmtree(tmp_path / "registry")
