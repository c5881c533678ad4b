"""Alerts: conditions found by the evaluator, kept in the ``alerts`` table, published on MQTT.

An alert is keyed by ``(kind, fleet, device, model, version, feature)``; at most one is
open per key. :func:`reconcile` opens an alert for a condition without an open one, and
resolves an open alert whose subject was judged this round without the condition (a
subject that could not be judged, e.g. a quiet device under ``min_rows``, keeps its open
alerts as they are; a drift score back under the alert level but still at watch level
keeps its alert open too). An open alert about a model version that its device (or, for a
fleet-wide alert, every device) no longer serves is resolved as superseded: after a deploy
or a rollback nobody runs that version any more, so its condition cannot clear by itself.
Each change is published as ``edgeml.alert/1`` on
:func:`edgeml.runtime.topics.alert_topic` (QoS 1, not retained).

Kinds (:data:`KINDS`): ``device_lost`` ($state lost), ``device_silent`` (no window for
``health.silent_windows`` intervals), ``error_rate``, ``latency_p95``, ``lost_windows``,
``spool_drops``, ``drift`` (PSI/JS... of a feature or of the predictions), ``missing_rate``,
``out_of_range`` and ``decay`` (labelled accuracy or MAE).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select, tuple_, update
from sqlalchemy.orm import Session

from edgeml.fleet.schema import Alert, Device
from edgeml.runtime import payloads
from edgeml.runtime.topics import alert_topic

__all__ = ["KINDS", "AlertChange", "Condition", "publish_changes", "reconcile"]

KINDS = ("device_lost", "device_silent", "error_rate", "latency_p95", "lost_windows",
         "spool_drops", "drift", "missing_rate", "out_of_range", "decay")

Key = tuple[str, str | None, str | None, str | None, int | None, str | None]
Subject = tuple[str, str | None, str | None, str | None, int | None]  # kind, fleet, device, model, version


@dataclass(frozen=True)
class Condition:
    """A breached threshold found this round."""

    kind: str
    fleet: str | None
    device: str | None
    model: str | None
    version: int | None
    feature: str | None
    value: float | None
    threshold: float | None
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.kind, self.fleet, self.device, self.model, self.version, self.feature)

    @property
    def subject(self) -> Subject:
        return (self.kind, self.fleet, self.device, self.model, self.version)


@dataclass(frozen=True)
class AlertChange:
    """An alert opened or resolved this round (what is published)."""

    state: str  # open | resolved
    id: int
    kind: str
    fleet: str | None
    device: str | None
    model: str | None
    version: int | None
    feature: str | None
    value: float | None
    threshold: float | None
    message: str
    opened_at: datetime
    resolved_at: datetime | None

    def payload(self) -> dict[str, Any]:
        return payloads.alert(
            alert_id=self.id, state=self.state, kind=self.kind, fleet=self.fleet,
            device=self.device, model=self.model, version=self.version, feature=self.feature,
            value=self.value, threshold=self.threshold, message=self.message,
            opened_at=self.opened_at.timestamp(),
            resolved_at=self.resolved_at.timestamp() if self.resolved_at else None)


def _key(row: Any) -> Key:
    return (row.kind, row.fleet, row.device, row.model_name, row.model_version, row.feature)


def reconcile(session: Session, now: datetime, conditions: Iterable[Condition],
              judged: set[Subject], hold: set[Key] | None = None,
              ) -> tuple[list[AlertChange], list[AlertChange], int]:
    """Open and resolve alerts (in ``session``, not committed); returns (opened, resolved, open).

    ``hold``: keys still at watch level; an open alert of such a key stays open (hysteresis:
    a score wavering around the alert threshold does not open and resolve in turn).
    """
    hold = hold or set()
    t = cast(Table, Alert.__table__)
    conditions = list(conditions)
    open_rows = session.execute(select(t).where(t.c.resolved_at.is_(None))).all()
    gone = _Superseded(session, [(r.fleet, r.device, r.model_name, r.model_version)
                                 for r in open_rows]
                       + [(c.fleet, c.device, c.model, c.version) for c in conditions])
    current: dict[Key, Condition] = {}
    for c in conditions:  # the first condition of a key wins (the caller orders them)
        if not gone(c.fleet, c.device, c.model, c.version):  # nobody serves it any more
            current.setdefault(c.key, c)
    open_keys: dict[Key, Any] = {}
    resolved: list[AlertChange] = []
    for row in open_rows:
        key = _key(row)
        if key in open_keys:  # a duplicate from a race between two evaluators: keep the oldest
            _resolve(session, row.id, now)
            continue
        open_keys[key] = row
        superseded = gone(row.fleet, row.device, row.model_name, row.model_version)
        if superseded or (key not in current and key[:5] in judged and key not in hold):
            _resolve(session, row.id, now)
            resolved.append(_change("resolved", row.id, row, now))
    opened: list[AlertChange] = []
    resolved_ids = {c.id for c in resolved}
    for key, c in current.items():
        if key in open_keys and open_keys[key].id not in resolved_ids:
            session.execute(update(t).where(t.c.id == open_keys[key].id)
                            .values(value=c.value, threshold=c.threshold, message=c.message))
            continue
        new_id = session.execute(t.insert().values(
            kind=c.kind, severity="alert", fleet=c.fleet, device=c.device, model_name=c.model,
            model_version=c.version, feature=c.feature, value=c.value, threshold=c.threshold,
            message=c.message, opened_at=now, resolved_at=None, details=c.details or None,
        ).returning(t.c.id)).scalar_one()
        opened.append(AlertChange("open", int(new_id), c.kind, c.fleet, c.device, c.model,
                                  c.version, c.feature, c.value, c.threshold, c.message, now, None))
    still_open = len(open_keys) - len(resolved) + len(opened)
    return opened, resolved, still_open


class _Superseded:
    """Tells whether an alert's subject is a model version nobody it concerns serves any more:
    its device reports another version of that model, or (fleet-wide) no device runs it."""

    def __init__(self, session: Session, subjects: Sequence[tuple[Any, Any, Any, Any]]) -> None:
        d = cast(Table, Device.__table__)
        pairs = {(f, dev) for f, dev, m, v in subjects if dev is not None and m is not None
                 and v is not None}
        self.serving: dict[tuple[str, str], tuple[Any, Any]] = {}
        if pairs:
            rows = session.execute(select(d.c.fleet, d.c.device, d.c.model_name,
                                          d.c.model_version)
                                   .where(tuple_(d.c.fleet, d.c.device).in_(sorted(pairs))))
            self.serving = {(r.fleet, r.device): (r.model_name, r.model_version) for r in rows}
        self.served: set[tuple[Any, Any]] = set()
        if any(dev is None and m is not None and v is not None for _, dev, m, v in subjects):
            self.served = {(r.model_name, r.model_version) for r in session.execute(
                select(d.c.model_name, d.c.model_version).distinct())}

    def __call__(self, fleet: Any, device: Any, model: Any, version: Any) -> bool:
        if model is None or version is None:
            return False
        if device is not None:
            now = self.serving.get((fleet, device))
            # only when the device reports another version of the same model
            return (now is not None and now[0] == model and now[1] is not None
                    and now[1] != version)
        return bool(self.served) and (model, version) not in self.served \
            and any(n == model for n, _ in self.served)


def _resolve(session: Session, alert_id: int, now: datetime) -> None:
    t = cast(Table, Alert.__table__)
    session.execute(update(t).where(t.c.id == alert_id).values(resolved_at=now))


def _change(state: str, alert_id: int, row: Any, now: datetime) -> AlertChange:
    return AlertChange(state, int(alert_id), row.kind, row.fleet, row.device, row.model_name,
                       row.model_version, row.feature, row.value, row.threshold,
                       row.message or "", row.opened_at, now if state == "resolved" else None)


Publisher = Callable[[str, bytes], None]


def publish_changes(publish: Publisher | None, base: str, changes: Iterable[AlertChange]) -> int:
    """Publish each change on its alert topic; returns how many were handed to ``publish``."""
    if publish is None:
        return 0
    n = 0
    for change in changes:
        publish(alert_topic(base, change.fleet, change.device), payloads.dumps(change.payload()))
        n += 1
    return n
