"""The automatic retraining trigger: a monitor task that starts ``edgeml retrain`` on its own.

Configured by the ``retrain:`` section of the thresholds file (``edgeml monitor
--evaluate-every S --thresholds FILE``)::

    retrain:
      logs: retrain-logs              # the retrain processes' output (default: beside FILE)
      models:
        penguins:                     # the model name (= the recipe's name)
          recipe: models/penguins.yaml   # relative paths are relative to FILE
          registry: registry             # --registry of the retraining (default: its own)
          min_labels: 100             # new labels (feedback rows since the last run started)
          delay: 30m                  # how long a decay/drift alert must have been open
          cooldown: 1d                # after the last run (its end, or its start) before the next
          alerts: [decay, drift]      # alert kinds that count (default: both)
          args: ["--field-weight", "2"]  # more options for edgeml retrain

Each round (:meth:`RetrainTrigger.tick`, every ``interval`` seconds on the monitor's
maintenance thread), per model: when an alert of one of those kinds for the model has been
open since ``now - delay`` or longer, at least ``min_labels`` feedback rows of the model were
received since the start of its last run, no run is going on and the cool-down has passed,
the trigger inserts a ``retrain_runs`` row (state ``running``, trigger = the alert's kind,
``alert_id``, this host). The partial unique index ``uq_retrain_runs_one_running`` makes a
second insert for the model fail, so two monitors never start two retrainings of one model:
the loser just skips. The winner then starts ``python -m edgeml retrain RECIPE --db URL
--run-id ID --min-labels N [--registry DIR] [args]`` as a detached process (its own session;
stdout and stderr to ``<logs>/<model>-<id>.log``) and records its pid. A URL with a password
is passed in ``$EDGEML_FLEET_DB`` instead of ``--db`` (argv is readable by every local user).

The retraining finishes its row itself (registered / rejected / failed, with version, reason
and outcome). The trigger reaps what it cannot: a ``running`` row of this host whose process
is gone becomes ``failed`` with "process exited with code N" (a child of this monitor) or
"process disappeared" (a pid no longer alive, e.g. after a monitor restart). Rows are shown
by ``edgeml fleet retrains``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table

from edgeml.errors import UsageError
from edgeml.fleet.thresholds import parse_duration

if TYPE_CHECKING:
    from edgeml.fleet.db import Store
    from edgeml.fleet.monitor import Monitor

__all__ = ["RetrainConfig", "RetrainRule", "RetrainTrigger", "parse_retrain", "retrain_runs"]

log = logging.getLogger(__name__)

TRIGGER_KINDS = ("decay", "drift")
DEFAULT_INTERVAL_S = 30.0
NEVER_STARTED_S = 120.0  # a running row of this host without a pid after this: the start failed
_RULE_KEYS = {"recipe", "registry", "min_labels", "delay", "cooldown", "alerts", "args"}


@dataclass(frozen=True)
class RetrainRule:
    """When and how to retrain one model."""

    model: str
    recipe: Path
    min_labels: int = 100
    delay_s: float = 1800.0
    cooldown_s: float = 86400.0
    alerts: tuple[str, ...] = TRIGGER_KINDS
    registry: Path | None = None
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetrainConfig:
    """The ``retrain:`` section: the rules by model, and where the processes' output goes."""

    rules: dict[str, RetrainRule] = field(default_factory=dict)
    logs: Path = Path("retrain-logs")
    interval_s: float = DEFAULT_INTERVAL_S


def parse_retrain(raw: Any, source: str) -> RetrainConfig | None:
    """Validate a ``retrain:`` section (None: no section); errors name the file and the key."""
    if raw is None:
        return None
    where = f"{source}: retrain"
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a mapping with models:")
    unknown = sorted(set(raw) - {"logs", "models", "interval"})
    if unknown:
        raise UsageError(f"{where}.{unknown[0]}: unknown key (known: interval, logs, models)")
    base = Path(source).parent  # relative paths are relative to the thresholds file

    def path(value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{key}: expected a path, got {value!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p).absolute()

    logs = path(raw.get("logs", "retrain-logs"), f"{where}.logs")
    interval = parse_duration(raw.get("interval", DEFAULT_INTERVAL_S), f"{where}.interval")
    models = raw.get("models")
    if not isinstance(models, dict) or not models:
        raise UsageError(f"{where}.models: expected a mapping of model name -> rule")
    rules: dict[str, RetrainRule] = {}
    for name, spec in models.items():
        at = f"{where}.models.{name}"
        if not isinstance(spec, dict):
            raise UsageError(f"{at}: expected a mapping (recipe, min_labels, delay, cooldown...)")
        bad = sorted(set(spec) - _RULE_KEYS)
        if bad:
            raise UsageError(f"{at}.{bad[0]}: unknown key (known: {', '.join(sorted(_RULE_KEYS))})")
        if "recipe" not in spec:
            raise UsageError(f"{at}.recipe: required (the recipe file to retrain)")
        recipe = path(spec["recipe"], f"{at}.recipe")
        min_labels = spec.get("min_labels", 100)
        if isinstance(min_labels, bool) or not isinstance(min_labels, int) or min_labels < 1:
            raise UsageError(f"{at}.min_labels: expected a count >= 1, got {min_labels!r}")
        kinds = spec.get("alerts", list(TRIGGER_KINDS))
        if isinstance(kinds, str):
            kinds = [kinds]
        if not isinstance(kinds, list) or not kinds or any(k not in TRIGGER_KINDS for k in kinds):
            raise UsageError(f"{at}.alerts: expected a list of {' and '.join(TRIGGER_KINDS)}, "
                             f"got {kinds!r}")
        args = spec.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) and
                                                 not isinstance(a, bool) for a in args):
            raise UsageError(f"{at}.args: expected a list of edgeml retrain options, got {args!r}")
        owned = {"--db", "--run-id", "--registry", "--min-labels"}
        clash = [a for a in map(str, args) if a.split("=", 1)[0] in owned]
        if clash:
            raise UsageError(f"{at}.args: {clash[0]} is set by the trigger (use the rule's own "
                             "keys: recipe, registry, min_labels)")
        rules[str(name)] = RetrainRule(
            model=str(name), recipe=recipe, min_labels=min_labels,
            delay_s=_duration(spec.get("delay", "30m"), f"{at}.delay"),
            cooldown_s=_duration(spec.get("cooldown", "1d"), f"{at}.cooldown"),
            alerts=tuple(kinds),
            registry=path(spec["registry"], f"{at}.registry") if "registry" in spec else None,
            args=tuple(str(a) for a in args))
    return RetrainConfig(rules, logs, interval)


def _duration(value: Any, where: str) -> float:
    if value in (0, "0"):
        return 0.0
    return parse_duration(value, where)


def _host() -> str:
    return socket.gethostname()[:128]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@dataclass
class _Started:
    run_id: int
    process: subprocess.Popen[bytes]
    log: Path


class RetrainTrigger:
    """The trigger for one store: ``tick(now)`` reaps, then starts what is due (see module doc).

    As a monitor task: ``monitor.add_task(config.interval_s, RetrainTrigger(config, url),
    "retrain")`` (:func:`edgeml.fleet.monitor_tasks.retrain_task` does it).
    """

    def __init__(self, config: RetrainConfig, db_url: str, *, host: str | None = None,
                 python: str = sys.executable) -> None:
        self.config = config
        self.db_url = db_url
        self.host = host or _host()
        self.python = python
        self.children: dict[int, _Started] = {}  # run id -> the process this trigger started

    def __call__(self, monitor: Monitor) -> None:
        self.tick(monitor.store)

    # -- one round -------------------------------------------------------------------------

    def tick(self, store: Store, now: datetime | None = None) -> list[int]:
        """Reap finished processes, then start the runs that are due; returns the new run ids."""
        now = now or datetime.now(timezone.utc)
        self.reap(store, now)
        started = []
        for rule in self.config.rules.values():
            run_id = self._maybe_start(store, rule, now)
            if run_id is not None:
                started.append(run_id)
        return started

    def reap(self, store: Store, now: datetime | None = None) -> list[int]:
        """Mark ``failed`` the running rows of this host whose process is gone; their ids."""
        from sqlalchemy import select

        from edgeml.fleet.schema import RetrainRun

        now = now or datetime.now(timezone.utc)
        t = cast(Table, RetrainRun.__table__)
        with store.session() as s:
            rows = s.execute(select(t.c.id, t.c.pid, t.c.started_at)
                             .where(t.c.state == "running", t.c.host == self.host)).all()
        reaped = []
        running = {int(r.id) for r in rows}
        for run_id in list(self.children):
            child = self.children[run_id]
            code = child.process.poll()
            if code is None:
                continue
            del self.children[run_id]
            if run_id in running and self._fail(store, run_id, now, f"process exited with code "
                                                f"{code} (output: {child.log})"):
                reaped.append(run_id)
        for r in rows:
            if int(r.id) in self.children:
                continue
            if r.pid is None:
                if r.started_at is not None and now - r.started_at > timedelta(seconds=NEVER_STARTED_S) \
                        and self._fail(store, int(r.id), now, "process never started"):
                    reaped.append(int(r.id))
                continue
            if not _pid_alive(int(r.pid)) and self._fail(store, int(r.id), now,
                                                         "process disappeared"):
                reaped.append(int(r.id))
        return reaped

    # -- helpers ---------------------------------------------------------------------------

    def _fail(self, store: Store, run_id: int, now: datetime, reason: str) -> bool:
        from sqlalchemy import update

        from edgeml.fleet.schema import RetrainRun

        t = cast(Table, RetrainRun.__table__)
        with store.session() as s:  # only a row still running: the process may have finished it
            n = cast(Any, s.execute(update(t).where(t.c.id == run_id, t.c.state == "running")
                                    .values(state="failed", reason=reason,
                                            finished_at=now))).rowcount
        if n:
            log.warning("retrain run %d: %s", run_id, reason)
        return bool(n)

    def due(self, store: Store, rule: RetrainRule, now: datetime) -> tuple[Any, str] | None:
        """The alert that makes ``rule`` due now, or None with nothing due; (alert, "")."""
        from sqlalchemy import func, select

        from edgeml.fleet.schema import Alert, Feedback, RetrainRun

        a, r, f = (cast(Table, x.__table__) for x in (Alert, RetrainRun, Feedback))
        with store.session() as s:
            alert = s.execute(
                select(a.c.id, a.c.kind, a.c.opened_at)
                .where(a.c.resolved_at.is_(None), a.c.model_name == rule.model,
                       a.c.kind.in_(rule.alerts),
                       a.c.opened_at <= now - timedelta(seconds=rule.delay_s))
                .order_by(a.c.opened_at, a.c.id).limit(1)).first()
            if alert is None:
                return None
            last = s.execute(select(r.c.state, r.c.started_at, r.c.finished_at)
                             .where(r.c.model_name == rule.model)
                             .order_by(r.c.started_at.desc(), r.c.id.desc()).limit(1)).first()
            if last is not None:
                if last.state == "running":
                    return None
                ended = last.finished_at or last.started_at
                if now - ended < timedelta(seconds=rule.cooldown_s):
                    return None
            labels = select(func.count()).select_from(f).where(f.c.model_name == rule.model)
            if last is not None:
                labels = labels.where(f.c.received_at >= last.started_at)
            n = int(s.execute(labels).scalar_one())
        if n < rule.min_labels:
            log.debug("retrain %s: %d new labels of %d", rule.model, n, rule.min_labels)
            return None
        return alert, f"{n} new labels"

    def command(self, rule: RetrainRule, run_id: int) -> tuple[list[str], dict[str, str]]:
        """The retrain command line and its environment."""
        from sqlalchemy.engine import make_url

        env = dict(os.environ)
        cmd = [self.python, "-m", "edgeml", "retrain", str(rule.recipe)]
        try:
            has_password = make_url(self.db_url).password is not None
        except Exception:
            has_password = False
        if has_password:
            env["EDGEML_FLEET_DB"] = self.db_url
        else:
            cmd += ["--db", self.db_url]
        cmd += ["--run-id", str(run_id), "--min-labels", str(rule.min_labels)]
        if rule.registry is not None:
            cmd += ["--registry", str(rule.registry)]
        return [*cmd, *rule.args], env

    def _maybe_start(self, store: Store, rule: RetrainRule, now: datetime) -> int | None:
        from sqlalchemy import update
        from sqlalchemy.exc import IntegrityError

        from edgeml.fleet.schema import RetrainRun

        found = self.due(store, rule, now)
        if found is None:
            return None
        alert, why = found
        t = cast(Table, RetrainRun.__table__)
        try:
            with store.session() as s:
                run_id = int(s.execute(t.insert().values(
                    model_name=rule.model, recipe=str(rule.recipe), state="running",
                    trigger=str(alert.kind), alert_id=int(alert.id), host=self.host,
                    started_at=now).returning(t.c.id)).scalar_one())
        except IntegrityError:  # another monitor started one first (one running per model)
            log.info("retrain %s: already running (started elsewhere)", rule.model)
            return None
        cmd, env = self.command(rule, run_id)
        log_path = self.config.logs / f"{rule.model}-{run_id}.log"
        try:
            self.config.logs.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as out:
                process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True, cwd=rule.recipe.parent)
        except OSError as exc:
            self._fail(store, run_id, now, f"cannot start the retraining: {exc}")
            return None
        self.children[run_id] = _Started(run_id, process, log_path)
        with store.session() as s:
            s.execute(update(t).where(t.c.id == run_id).values(pid=process.pid))
        log.warning("retrain %s: started run %d (pid %d) for %s alert %d open since %s, %s; "
                    "output in %s", rule.model, run_id, process.pid, alert.kind, alert.id,
                    alert.opened_at, why, log_path)
        return run_id


def retrain_runs(store: Store, model: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``retrain_runs`` rows (``edgeml fleet retrains``), as JSON-ready dicts."""
    from sqlalchemy import select

    from edgeml.fleet.schema import RetrainRun

    t = cast(Table, RetrainRun.__table__)
    q = select(t).order_by(t.c.started_at.desc(), t.c.id.desc()).limit(limit)
    if model is not None:
        q = q.where(t.c.model_name == model)
    with store.session() as s:
        rows = s.execute(q).all()
    out = []
    for r in rows:
        row = cast(Any, r)
        out.append({
            "id": row.id, "model": row.model_name, "state": row.state, "trigger": row.trigger,
            "alert_id": row.alert_id, "host": row.host, "pid": row.pid,
            "started_at": _iso(row.started_at), "finished_at": _iso(row.finished_at),
            "version": row.version, "deployment_id": row.deployment_id, "reason": row.reason,
            "recipe": row.recipe})
    return out


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
