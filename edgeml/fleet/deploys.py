"""Fleet deploys in the database: create a staged rollout, read its status, halt, resume, roll back.

A deployment is data; the monitors drive it (:mod:`edgeml.fleet.rollout`), so a rollout
survives the command that created it. :func:`create_deployment` verifies the bundle, stores
it whole in ``bundles`` (any monitor answers chunk requests from there), picks the devices
and assigns each to a stage::

    stages (cumulative fractions) 0.1, 0.5, 1.0 over N devices (sorted by id): stage k holds
    the devices ceil(f[k-1] * N) .. ceil(f[k] * N) - 1; the first stage has at least one.

Device rows (``deployment_devices.state``): ``pending`` (nothing sent), ``sent`` (install
command sent, no report yet), ``downloading``, ``verified``, ``switched``, ``committed``,
``rolled_back``, ``failed``, ``skipped`` (left out when resumed), ``rolling_back`` (a
rollback is asked for; the controller repeats it until the device reports).

Every change bumps ``deployments.revision``: the controller's compare-and-set on it makes
several monitors advance one rollout without conflict. Library API, host side.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from edgeml.errors import NotFoundError, UsageError
from edgeml.fleet.schema import BundleBlob, Deployment, DeploymentDevice, Device
from edgeml.runtime.topics import validate_id

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FINAL_STATES",
    "GATE_KEYS",
    "Gates",
    "assign_stages",
    "bump",
    "create_deployment",
    "deployment_status",
    "halt_deployment",
    "list_deployments",
    "new_deployment_id",
    "parse_stages",
    "resume_deployment",
    "rollback_device",
]

DEFAULT_CHUNK_SIZE = 64 * 1024
FINAL_STATES = ("completed", "halted", "rolled_back", "cancelled")
GATE_KEYS = ("max_error_rate", "max_p95_ratio", "min_requests", "max_psi")
DEVICE_DONE = ("committed", "rolled_back", "failed", "skipped")


@dataclass(frozen=True)
class Gates:
    """Health gates. The first three also go to the agent (its trial); ``max_psi`` is judged
    by the fleet side only. ``None``: that gate is not judged."""

    max_error_rate: float | None = 0.05
    max_p95_ratio: float | None = 3.0
    min_requests: int = 20
    max_psi: float | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Gates:
        raw = dict(raw or {})
        unknown = set(raw) - set(GATE_KEYS)
        if unknown:
            raise UsageError(f"unknown gate {sorted(unknown)[0]!r}; known: {', '.join(GATE_KEYS)}")
        d = cls()
        gates = cls(raw.get("max_error_rate", d.max_error_rate),
                    raw.get("max_p95_ratio", d.max_p95_ratio),
                    int(raw.get("min_requests", d.min_requests)),
                    raw.get("max_psi", d.max_psi))
        if gates.max_error_rate is not None and not 0 <= gates.max_error_rate <= 1:
            raise UsageError(f"--max-error-rate {gates.max_error_rate} must be in [0, 1]")
        if gates.max_p95_ratio is not None and gates.max_p95_ratio <= 0:
            raise UsageError(f"--max-p95-ratio {gates.max_p95_ratio} must be > 0")
        if gates.max_psi is not None and gates.max_psi <= 0:
            raise UsageError(f"--max-psi {gates.max_psi} must be > 0")
        if gates.min_requests < 1:
            raise UsageError("min_requests must be >= 1")
        return gates

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in GATE_KEYS}

    def agent(self) -> dict[str, Any]:
        """The agent's trial gates (:class:`edgeml.agent.protocol.Gates`)."""
        return {"max_error_rate": 1.0 if self.max_error_rate is None else self.max_error_rate,
                "max_p95_ratio": 1e9 if self.max_p95_ratio is None else self.max_p95_ratio,
                "min_requests": self.min_requests}


def parse_stages(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"10%,50%,100%"`` (or fractions ``0.1,0.5,1``) -> ``(0.1, 0.5, 1.0)``."""
    parts: list[Any] = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    out: list[float] = []
    for part in parts:
        try:
            if isinstance(part, str) and part.endswith("%"):
                value = float(part[:-1]) / 100.0
            else:
                value = float(part)
        except ValueError:
            raise UsageError(f"--stages: {part!r} is not a percentage (10%) or a fraction") from None
        out.append(value)
    if not out or any(not 0 < v <= 1 for v in out):
        raise UsageError("--stages: each stage is a share of the fleet in (0%, 100%]")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise UsageError("--stages: cumulative shares must grow (10%,50%,100%)")
    if not math.isclose(out[-1], 1.0):
        raise UsageError("--stages: the last stage must be 100%")
    return (*out[:-1], 1.0)


def assign_stages(devices: Iterable[str], stages: Sequence[float]) -> list[tuple[str, int]]:
    """(device, stage) for every device, sorted by id; see the module docstring."""
    ordered = sorted(set(devices))
    n = len(ordered)
    out: list[tuple[str, int]] = []
    start = 0
    for k, frac in enumerate(stages):
        end = max(1, math.ceil(frac * n - 1e-9)) if k == 0 else math.ceil(frac * n - 1e-9)
        end = min(max(end, start), n)
        out.extend((d, k) for d in ordered[start:end])
        start = end
    out.extend((d, len(stages) - 1) for d in ordered[start:])
    return out


def new_deployment_id(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"d-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def bump(session: Session, deployment_id: str, now: datetime | None = None) -> None:
    """Count a change of a deployment (its rows included): a racing controller's CAS fails."""
    session.execute(update(Deployment).where(Deployment.id == deployment_id).values(
        revision=Deployment.revision + 1, updated_at=now or _utcnow()))


def _store_bundle(session: Session, path: Path, manifest: Any) -> tuple[str, int]:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if session.get(BundleBlob, digest) is None:
        session.add(BundleBlob(sha256=digest, name=manifest.name, version=manifest.version,
                               target=manifest.target.name, arch=manifest.target.arch,
                               size=len(data), manifest=manifest.to_dict(), data=data,
                               created_at=_utcnow()))
        session.flush()
    return digest, len(data)


def create_deployment(store: Any, bundle_path: str | Path, fleet: str, *,
                      devices: Sequence[str] | None = None, stages: Sequence[float] = (1.0,),
                      soak_s: float = 30.0, gates: dict[str, Any] | None = None,
                      allow_downgrade: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      details: dict[str, Any] | None = None, now: datetime | None = None) -> str:
    """Verify ``bundle_path``, store it, plan the stages and insert a running deployment."""
    from edgeml.agent.protocol import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
    from edgeml.bundle.verify import verify_bundle

    validate_id(fleet, "fleet id")
    stages = parse_stages(stages)
    gate = Gates.from_dict(gates)
    if not 0 <= soak_s <= 86400:
        raise UsageError(f"--soak {soak_s} must be between 0 and 86400 seconds")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise UsageError(f"chunk size {chunk_size} must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    path = Path(bundle_path)
    report = verify_bundle(path)
    man = report.manifest
    assert man is not None
    now = now or _utcnow()
    with store.session() as session:
        known = {d: v for d, v in session.execute(
            select(Device.device, Device.model_version).where(Device.fleet == fleet))}
        if devices is None:
            chosen = sorted(known)
            if not chosen:
                raise NotFoundError(f"fleet {fleet!r} has no devices in the store (the monitor "
                                    "records them from $state/$info); give --devices")
        else:
            chosen = sorted({validate_id(d.strip(), "device id") for d in devices if d.strip()})
            if not chosen:
                raise UsageError("--devices: give at least one device id")
        digest, _size = _store_bundle(session, path, man)
        ident = new_deployment_id(now)
        session.add(Deployment(
            id=ident, fleet=fleet, bundle_sha256=digest, model_name=man.name,
            model_version=man.version, state="running", stages=list(stages), stage=0,
            stage_started_at=now, soak_until=None, soak_s=float(soak_s), chunk_size=chunk_size,
            allow_downgrade=allow_downgrade, gates=gate.to_dict(), reason=None, revision=0,
            created_at=now, updated_at=now, details=details))
        for device, stage in assign_stages(chosen, stages):
            session.add(DeploymentDevice(
                deployment_id=ident, fleet=fleet, device=device, stage=stage, state="pending",
                from_version=known.get(device), sends=0, updated_at=now))
    return ident


def _deployment(session: Session, ident: str) -> Deployment:
    dep = session.get(Deployment, ident)
    if dep is None:
        raise NotFoundError(f"no deployment {ident!r}")
    return dep


def _row_dict(r: DeploymentDevice) -> dict[str, Any]:
    return {"device": r.device, "fleet": r.fleet, "stage": r.stage, "state": r.state,
            "have": r.have, "count": r.count, "reason": r.reason,
            "from_version": r.from_version, "serving_version": r.serving_version,
            "sends": r.sends, "sent_at": r.sent_at, "committed_at": r.committed_at,
            "updated_at": r.updated_at}


def _dep_dict(d: Deployment) -> dict[str, Any]:
    return {"id": d.id, "fleet": d.fleet, "model": d.model_name, "version": d.model_version,
            "bundle_sha256": d.bundle_sha256, "state": d.state, "stages": d.stages,
            "stage": d.stage, "stage_started_at": d.stage_started_at,
            "soak_until": d.soak_until, "soak_s": d.soak_s, "gates": d.gates,
            "allow_downgrade": d.allow_downgrade, "reason": d.reason, "revision": d.revision,
            "created_at": d.created_at, "updated_at": d.updated_at, "details": d.details}


def list_deployments(store: Any, limit: int = 20) -> list[dict[str, Any]]:
    """The newest deployments with a count of devices per state."""
    with store.session() as session:
        deps = session.scalars(select(Deployment).order_by(Deployment.created_at.desc(),
                                                           Deployment.id.desc()).limit(limit))
        out = []
        for d in deps:
            counts: dict[str, int] = {}
            for (state,) in session.execute(select(DeploymentDevice.state).where(
                    DeploymentDevice.deployment_id == d.id)):
                counts[state] = counts.get(state, 0) + 1
            out.append({**_dep_dict(d), "devices": counts})
        return out


def deployment_status(store: Any, ident: str) -> dict[str, Any]:
    """One deployment and every device's part in it (stage, state, progress, reason)."""
    with store.session() as session:
        d = _deployment(session, ident)
        rows = session.scalars(select(DeploymentDevice).where(
            DeploymentDevice.deployment_id == ident).order_by(DeploymentDevice.stage,
                                                             DeploymentDevice.device))
        return {**_dep_dict(d), "devices": [_row_dict(r) for r in rows]}


def halt_deployment(store: Any, ident: str, reason: str = "halted by the operator") -> None:
    """Stop a running deployment: no stage starts and no command is sent (devices already on
    trial finish it). ``edgeml deploy resume`` continues it."""
    with store.session() as session:
        d = _deployment(session, ident)
        if d.state != "running":
            raise UsageError(f"deployment {ident} is {d.state}, not running")
        d.state, d.reason = "halted", reason
        session.flush()
        bump(session, ident)


def resume_deployment(store: Any, ident: str) -> None:
    """Continue a halted deployment. Devices of its stage that failed or rolled back are
    ``skipped`` (a new deployment reaches them); the stage's gates are judged again."""
    with store.session() as session:
        d = _deployment(session, ident)
        if d.state != "halted":
            raise UsageError(f"deployment {ident} is {d.state}: only a halted one resumes")
        d.state, d.reason, d.soak_until = "running", None, None
        session.execute(update(DeploymentDevice).where(
            DeploymentDevice.deployment_id == ident, DeploymentDevice.stage == d.stage,
            DeploymentDevice.state.in_(("failed", "rolled_back", "rolling_back")))
            .values(state="skipped", updated_at=_utcnow()))
        session.flush()
        bump(session, ident)


def rollback_device(store: Any, device: str, fleet: str | None = None) -> dict[str, Any]:
    """Ask for the rollback of ``device``'s last committed deployment; the monitor sends the
    command (and repeats it) until the device reports. Returns that deployment's id and row."""
    validate_id(device, "device id")
    with store.session() as session:
        q = select(DeploymentDevice).where(DeploymentDevice.device == device,
                                           DeploymentDevice.state == "committed")
        if fleet is not None:
            q = q.where(DeploymentDevice.fleet == validate_id(fleet, "fleet id"))
        rows = list(session.scalars(q.order_by(DeploymentDevice.committed_at.desc())))
        if not rows:
            raise NotFoundError(f"device {device!r} has no committed deployment to roll back")
        if len({r.fleet for r in rows}) > 1:
            raise UsageError(f"device {device!r} is in fleets "
                             f"{', '.join(sorted({r.fleet for r in rows}))}: give --fleet")
        row = rows[0]
        row.state, row.sends, row.sent_at = "rolling_back", 0, None
        row.reason, row.updated_at = "rollback asked by the operator", _utcnow()
        session.flush()
        bump(session, row.deployment_id)
        return {"deployment": row.deployment_id, **_row_dict(row)}
