"""The rollout controller: store deploy reports, advance staged rollouts, idempotently.

:func:`ingest_reports` stores ``edgeml.deploy-report/1`` messages in ``deploy_events``
(idempotent on ``(fleet, device, deployment, seq)``) and moves the device's
``deployment_devices`` row (state, progress, reason, serving version, commit time). A
``status`` report (an agent has (re)subscribed) makes the command pending for that device
due again at once.

:class:`Controller` advances every running deployment (and every deployment with a device
``rolling_back``). One pass over a deployment reads it and its rows, decides, and writes
with a compare-and-set on ``deployments.revision``; a report changing a row bumps the
revision too, so when two monitors (or a report) race, one wins and the others' pass is
dropped and redone from fresh data. Commands are published after the commit and are
idempotent on the agent; one not answered by a report is repeated after ``resend_s``.

Per deployment, in order:

1. devices ``rolling_back``: send ``rollback`` (valid on the agent during the transfer and
   the trial, and when idle for its last committed deployment; repeated, given up after
   ``MAX_ROLLBACK_SENDS``, the row becomes ``failed``);
2. a device of the current stage ``failed`` or ``rolled_back``: **halt** (reason names it),
   every device of the stage that got the command goes ``rolling_back``; later stages are
   never sent anything;
3. devices of the current stage ``pending`` (or ``sent`` and due): the install command;
4. every device of the stage ``committed``: after ``settle_s`` (the devices' last metrics
   windows arrive) judge the fleet-side gates (:func:`judge_stage`) over the stage's windows of
   the new version since the stage started; pass: the next stage (or ``completed``), fail:
   halt as in 2.

A deployment reaching a final state calls :func:`edgeml.fleet.promotion.finished` once
(by the monitor whose compare-and-set made it final).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgeml.agent import protocol
from edgeml.agent.protocol import BundleOffer, Command
from edgeml.fleet.deploys import FINAL_STATES, Gates, bump
from edgeml.fleet.schema import BundleBlob, DeployEvent, Deployment, DeploymentDevice, MetricsWindow

__all__ = ["MAX_ROLLBACK_SENDS", "Controller", "StageVerdict", "ingest_reports", "judge_stage"]

log = logging.getLogger(__name__)

MAX_ROLLBACK_SENDS = 10
IN_FLIGHT = ("sent", "downloading", "verified", "switched", "committed")
Send = Callable[[str, str, Command], None]  # (fleet, device, command)

# report event -> (row state, the row states it may move from)
_MOVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "received": ("downloading", ("pending", "sent", "downloading")),
    "resumed": ("downloading", ("pending", "sent", "downloading")),
    "verified": ("verified", ("pending", "sent", "downloading", "verified")),
    "switched": ("switched", ("pending", "sent", "downloading", "verified", "switched")),
    "committed": ("committed", ("pending", "sent", "downloading", "verified", "switched")),
    "rolled_back": ("rolled_back", ("pending", "sent", "downloading", "verified", "switched",
                                    "committed", "rolling_back")),
    "failed": ("failed", ("pending", "sent", "downloading", "verified", "switched",
                          "rolling_back")),
}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _parse_at(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _report(payload: bytes) -> dict[str, Any] | None:
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(raw, dict) or raw.get("schema") != protocol.REPORT_SCHEMA \
            or raw.get("event") not in protocol.EVENTS:
        return None
    ident = raw.get("id")
    if ident is not None and (not isinstance(ident, str) or len(ident) > 128):
        return None
    seq = raw.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
        return None
    return raw


def ingest_reports(store: Any, reports: Iterable[tuple[str, str, bytes]],
                   now: datetime | None = None) -> set[str]:
    """Store ``(fleet, device, payload)`` reports and move their rows; the deployments touched.
    Malformed payloads are logged and dropped (a report has no quarantine of its own)."""
    now = now or _utcnow()
    touched: set[str] = set()
    with store.session() as session:
        for fleet, device, payload in reports:
            raw = _report(payload)
            if raw is None:
                log.warning("malformed deploy report from %s/%s dropped", fleet, device)
                continue
            if _store_event(session, fleet, device, raw, now):
                touched |= _apply(session, fleet, device, raw, now)
        for ident in touched:
            bump(session, ident, now)
    return touched


def _store_event(session: Session, fleet: str, device: str, raw: dict[str, Any],
                 now: datetime) -> bool:
    """Insert the event; False if this (device, deployment, seq) is already stored."""
    ident, seq = raw.get("id"), raw.get("seq")
    if seq is not None and session.execute(select(DeployEvent.id).where(
            DeployEvent.fleet == fleet, DeployEvent.device == device,
            DeployEvent.deployment_id == ident, DeployEvent.seq == seq)).first() is not None:
        return False
    reason = raw.get("reason")
    try:
        with session.begin_nested():
            session.add(DeployEvent(deployment_id=ident, fleet=fleet, device=device, seq=seq,
                                    event=raw["event"], state=str(raw.get("state"))[:16],
                                    reason=str(reason) if reason is not None else None,
                                    at=_parse_at(raw.get("at")), received_at=now, payload=raw))
    except IntegrityError:  # another monitor stored the redelivered copy meanwhile
        return False
    return True


def _apply(session: Session, fleet: str, device: str, raw: dict[str, Any],
           now: datetime) -> set[str]:
    event, ident = raw["event"], raw.get("id")
    t = DeploymentDevice
    if event == "status":  # it listens again: what is pending for it is due now
        q = update(t).where(t.fleet == fleet, t.device == device,
                            t.state.in_(("sent", "rolling_back")))
        if ident is not None:
            q = q.where(t.deployment_id == ident)
        ids = set(session.scalars(select(t.deployment_id).where(
            t.fleet == fleet, t.device == device, t.state.in_(("sent", "rolling_back")))))
        if ident is not None:
            ids &= {ident}
        if ids:
            session.execute(q.values(sent_at=None, updated_at=now))
        return ids
    if ident is None:
        return set()
    row = session.get(t, (ident, device))
    if row is None or row.fleet != fleet:
        return set()
    serving = raw.get("serving")
    version = serving.get("version") if isinstance(serving, dict) else None
    if isinstance(version, int) and not isinstance(version, bool):
        row.serving_version = version
        if row.from_version is None and event == "received":
            row.from_version = version
    progress = raw.get("progress")
    if isinstance(progress, dict):
        row.have, row.count = progress.get("have"), progress.get("count")
    state, sources = _MOVES.get(event, (row.state, ()))
    if row.state in sources:
        row.state = state
        row.reason = str(raw["reason"]) if raw.get("reason") is not None else row.reason
        if state == "committed":
            row.committed_at = _parse_at(raw.get("at")) or now
        if state in ("verified", "switched", "committed") and row.count is not None:
            row.have = row.count  # the whole file is there
    row.updated_at = now
    return {ident}


# -- the fleet-side gates ----------------------------------------------------------------------


@dataclass
class StageVerdict:
    """What the fleet-side gates saw. ``reason`` is None when every judged gate held."""

    reason: str | None = None
    requests: int = 0
    errors: int = 0
    p95_ratio: float | None = None
    psi: tuple[str, float] | None = None  # the worst feature and its PSI
    judged: list[str] = field(default_factory=list)


def _weighted_p95(rows: list[tuple[int, float | None]]) -> tuple[int, float | None]:
    pairs = [(n, p) for n, p in rows if n and p is not None]
    total = sum(n for n, _ in pairs)
    if not total:
        return 0, None
    return total, sum(n * p for n, p in pairs) / total


def judge_stage(session: Session, dep: Deployment, devices: list[tuple[str, int | None]],
                now: datetime) -> StageVerdict:
    """The fleet-side gates over the windows of ``devices`` ((device, from_version)) for the
    new version since the stage started: error rate, p95 vs the previous version's windows
    (the hour before), worst PSI per input/prediction. No data for a gate: not judged."""
    gates = Gates.from_dict(dep.gates)
    verdict = StageVerdict()
    names = [d for d, _ in devices]
    if not names:
        return verdict
    since = dep.stage_started_at or dep.created_at
    w = MetricsWindow
    new = session.execute(select(w.requests, w.errors, w.p95_ms, w.bins, w.payload).where(
        w.fleet == dep.fleet, w.device.in_(names), w.model_name == dep.model_name,
        w.model_version == dep.model_version, w.window_end > since,
        w.window_end <= now)).all()
    verdict.requests = sum(int(r[0] or 0) for r in new)
    verdict.errors = sum(int(r[1] or 0) for r in new)
    enough = verdict.requests >= gates.min_requests
    if gates.max_error_rate is not None and enough:
        verdict.judged.append("error_rate")
        rate = verdict.errors / verdict.requests
        if rate > gates.max_error_rate:
            verdict.reason = (f"fleet error rate {rate:.3f} > {gates.max_error_rate} "
                              f"({verdict.errors}/{verdict.requests} requests)")
            return verdict
    old_versions = {v for _, v in devices if v is not None and v != dep.model_version}
    if gates.max_p95_ratio is not None and enough and old_versions:
        old = session.execute(select(w.requests, w.p95_ms).where(
            w.fleet == dep.fleet, w.device.in_(names), w.model_name == dep.model_name,
            w.model_version.in_(old_versions), w.window_end <= since,
            w.window_end > since - timedelta(hours=1))).all()
        n_old, p_old = _weighted_p95([(int(r[0] or 0), r[1]) for r in old])
        _n_new, p_new = _weighted_p95([(int(r[0] or 0), r[2]) for r in new])
        if n_old >= gates.min_requests and p_old and p_new is not None:
            verdict.judged.append("p95_ratio")
            verdict.p95_ratio = p_new / p_old
            if verdict.p95_ratio > gates.max_p95_ratio:
                verdict.reason = (f"fleet p95 latency {p_new:.2f} ms is {verdict.p95_ratio:.2f}x "
                                  f"the previous version's {p_old:.2f} ms "
                                  f"(> {gates.max_p95_ratio})")
                return verdict
    if gates.max_psi is not None and new:
        verdict.psi = _worst_psi(session, dep, [(r[3], r[4]) for r in new], gates.min_requests)
        if verdict.psi is not None:
            verdict.judged.append("psi")
            feature, value = verdict.psi
            if value > gates.max_psi:
                verdict.reason = f"PSI of {feature} {value:.3f} > {gates.max_psi}"
    return verdict


def _worst_psi(session: Session, dep: Deployment, windows: list[tuple[Any, Any]],
               min_rows: int) -> tuple[str, float] | None:
    """The largest PSI over the inputs and the prediction (edgeml.fleet.drift's layout and
    statistic) of the summed windows against the bundle's reference profile."""
    from edgeml.bundle.manifest import Manifest
    from edgeml.fleet import stattests
    from edgeml.fleet.layout import Reference, pack_window

    raw = session.execute(select(BundleBlob.manifest).where(
        BundleBlob.sha256 == dep.bundle_sha256)).scalar()
    if not isinstance(raw, dict):
        return None
    ref = Reference.from_manifest(Manifest.from_dict(raw))
    blobs = [bytes(b) if b is not None else pack_window(p or {}, ref.inputs, ref.task)
             for b, p in windows]
    matrix, _ok = ref.unpack(blobs)
    if not len(matrix):
        return None
    total = matrix.astype(np.float64).sum(axis=0)
    test = stattests.get("psi")
    worst: tuple[str, float] | None = None
    for seg in [*ref.segments, *([ref.prediction] if ref.prediction else [])]:
        if not seg.nbins or seg.kind not in test.kinds:
            continue
        counts = total[seg.offset:seg.offset + seg.nbins]
        present = counts.sum() if seg.kind == "prediction" \
            else total[seg.start] - total[seg.start + 1]
        if present < max(min_rows, 1):
            continue
        value = float(test(seg.ref, counts[None, :])[0])
        if np.isfinite(value) and (worst is None or value > worst[1]):
            worst = (seg.name, value)
    return worst


# -- the controller ---------------------------------------------------------------------------


class _Lost(Exception):
    """Another controller (or a report) changed the deployment first."""


@dataclass
class _Plan:
    dep: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, tuple[str, ...], dict[str, Any]]] = field(default_factory=list)
    commands: list[tuple[str, Command]] = field(default_factory=list)  # (device, command)

    def __bool__(self) -> bool:
        return bool(self.dep or self.rows or self.commands)


class Controller:
    """Advances rollouts: ``Controller(store, send).advance()`` (the monitor runs it)."""

    def __init__(self, store: Any, send: Send, *, resend_s: float = 15.0,
                 settle_s: float = 5.0) -> None:
        self.store = store
        self.send = send
        self.resend_s = resend_s
        self.settle_s = settle_s
        self.lost = 0  # passes dropped because another controller won the race
        self._offers: dict[str, BundleOffer] = {}

    def advance(self, now: datetime | None = None) -> int:
        """One pass over every deployment that needs one; the number of commands sent."""
        now = now or _utcnow()
        with self.store.session() as session:
            ids = set(session.scalars(select(Deployment.id).where(Deployment.state == "running")))
            ids |= set(session.scalars(select(DeploymentDevice.deployment_id).where(
                DeploymentDevice.state == "rolling_back")))
        return sum(self.advance_one(ident, now) for ident in sorted(ids))

    def advance_one(self, ident: str, now: datetime | None = None) -> int:
        now = now or _utcnow()
        final: Deployment | None = None
        try:
            with self.store.session() as session:
                dep = session.get(Deployment, ident)
                if dep is None:
                    return 0
                rows = list(session.scalars(select(DeploymentDevice).where(
                    DeploymentDevice.deployment_id == ident)))
                plan = self._plan(session, dep, rows, now)
                if not plan:
                    return 0
                done = plan.dep.get("state") in FINAL_STATES
                res = session.execute(update(Deployment).where(
                    Deployment.id == ident, Deployment.revision == dep.revision).values(
                    revision=dep.revision + 1, updated_at=now, **plan.dep))
                if res.rowcount != 1:  # type: ignore[attr-defined]
                    raise _Lost
                t = DeploymentDevice
                for device, sources, values in plan.rows:
                    session.execute(update(t).where(t.deployment_id == ident, t.device == device,
                                                    t.state.in_(sources))
                                    .values(updated_at=now, **values))
                if done:
                    session.expire(dep)
                    final = session.get(Deployment, ident)
        except _Lost:
            self.lost += 1
            return 0
        for device, cmd in plan.commands:
            try:
                self.send(dep.fleet, device, cmd)
            except Exception:  # a resend after resend_s recovers it
                log.exception("cannot send %s to %s", cmd.action, device)
        if plan.dep.get("state"):
            log.info("deployment %s: %s%s", ident, plan.dep["state"],
                     f" ({plan.dep.get('reason')})" if plan.dep.get("reason") else "")
        if final is not None:
            from edgeml.fleet.promotion import finished

            try:
                finished(self.store, final)
            except Exception:
                log.exception("promotion hook failed for deployment %s", ident)
        return len(plan.commands)

    # -- deciding -------------------------------------------------------------------------

    def _due(self, row: DeploymentDevice, now: datetime) -> bool:
        return row.sent_at is None or (now - row.sent_at).total_seconds() >= self.resend_s

    def _offer(self, session: Session, dep: Deployment) -> BundleOffer:
        offer = self._offers.get(dep.bundle_sha256)
        if offer is None:
            b = session.execute(select(BundleBlob.size, BundleBlob.name, BundleBlob.version,
                                       BundleBlob.target, BundleBlob.arch).where(
                BundleBlob.sha256 == dep.bundle_sha256)).one()
            offer = BundleOffer(dep.bundle_sha256, int(b[0]), dep.chunk_size, b[1], b[2], b[3], b[4])
            self._offers[dep.bundle_sha256] = offer
        return BundleOffer(offer.sha256, offer.size, dep.chunk_size, offer.name, offer.version,
                           offer.target, offer.arch)

    def _install(self, session: Session, dep: Deployment) -> Command:
        gates = protocol.Gates.from_dict(Gates.from_dict(dep.gates).agent())
        return Command(dep.id, "install", self._offer(session, dep), dep.allow_downgrade,
                       dep.soak_s, gates)

    def _rollback(self, plan: _Plan, row: DeploymentDevice, dep_id: str, now: datetime,
                  sources: tuple[str, ...]) -> None:
        plan.rows.append((row.device, sources, {"state": "rolling_back", "sends": row.sends + 1
                                                if row.state == "rolling_back" else 1,
                                                "sent_at": now}))
        plan.commands.append((row.device, Command(dep_id, "rollback")))

    def _halt(self, plan: _Plan, dep: Deployment, stage_rows: list[DeploymentDevice],
              reason: str, now: datetime) -> None:
        plan.dep.update(state="halted", reason=reason)
        for row in stage_rows:
            if row.state in IN_FLIGHT:
                self._rollback(plan, row, dep.id, now, (row.state,))

    def _plan(self, session: Session, dep: Deployment, rows: list[DeploymentDevice],
              now: datetime) -> _Plan:
        plan = _Plan()
        for row in rows:
            if row.state == "rolling_back" and self._due(row, now):
                if row.sends >= MAX_ROLLBACK_SENDS:
                    plan.rows.append((row.device, ("rolling_back",), {
                        "state": "failed",
                        "reason": f"no answer to {row.sends} rollback commands"}))
                else:
                    self._rollback(plan, row, dep.id, now, ("rolling_back",))
        if dep.state != "running":
            return plan
        stage_rows = [r for r in rows if r.stage == dep.stage]
        bad = [r for r in stage_rows if r.state in ("failed", "rolled_back")]
        if bad:
            r = bad[0]
            self._halt(plan, dep, stage_rows,
                       f"stage {dep.stage + 1}: {r.device} {r.state.replace('_', ' ')}"
                       f"{f': {r.reason}' if r.reason else ''}", now)
            return plan
        for row in stage_rows:
            if row.state == "pending" or (row.state == "sent" and self._due(row, now)):
                cmd = self._install(session, dep)
                assert cmd.bundle is not None
                plan.rows.append((row.device, (row.state,), {
                    "state": "sent", "sends": row.sends + 1, "sent_at": now,
                    "count": cmd.bundle.count}))
                plan.commands.append((row.device, cmd))
        active = [r for r in stage_rows if r.state != "skipped"]
        if not all(r.state == "committed" for r in active):
            return plan
        if dep.soak_until is None:
            plan.dep["soak_until"] = now + timedelta(seconds=min(self.settle_s, dep.soak_s))
            return plan
        if now < dep.soak_until:
            return plan
        verdict = judge_stage(session, dep, [(r.device, r.from_version) for r in active], now)
        if verdict.reason is not None:
            self._halt(plan, dep, stage_rows, f"stage {dep.stage + 1}: {verdict.reason}", now)
            return plan
        later = sorted({r.stage for r in rows if r.stage > dep.stage})
        if later:
            plan.dep.update(stage=later[0], stage_started_at=now, soak_until=None)
        else:
            plan.dep.update(state="completed", reason=None)
        return plan
