"""``edgeml retrain --deploy``: package the challenger and start its staged rollout.

The target is the one the champion runs on: the ``target`` the fleet's devices serving the
model report in ``$info`` (their current session), else that of the champion's bundles in
the fleet store's ``bundles`` table (every bundle offered for a deploy).
The devices are those of the fleet that run the model (``devices.model_name``). The
deployment carries ``details["promote"]`` (registry, name, version, run id), so that
:func:`edgeml.fleet.promotion.finished` moves the ``champion`` alias when it completes and
leaves it when it is halted. The retrain_runs row gets the deployment's id.

Limits: champions built for several targets (one deployment per target would need the
devices' targets) are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeml.errors import UsageError
from edgeml.train.registry import Entry

__all__ = ["champion_targets", "deploy_challenger", "deploy_retrained"]


def champion_targets(store: Any, name: str, version: int, fleet: str | None = None) -> list[str]:
    """The targets the champion runs on: the ``$info`` target of the fleet's devices that
    serve ``name`` (their current session), else the champion's bundles in the store."""
    from sqlalchemy import and_, select

    from edgeml.fleet.db import store_errors
    from edgeml.fleet.schema import BundleBlob, Device, DeviceSession

    with store_errors(store.url), store.engine.connect() as conn:
        found: set[str] = set()
        if fleet is not None:
            rows = conn.execute(select(DeviceSession.info).select_from(Device.__table__.join(
                DeviceSession.__table__, and_(DeviceSession.fleet == Device.fleet,
                                              DeviceSession.device == Device.device,
                                              DeviceSession.session == Device.session)))
                .where(Device.fleet == fleet, Device.model_name == name))
            for (info,) in rows:
                target = (info or {}).get("target") if isinstance(info, dict) else None
                if isinstance(target, dict) and isinstance(target.get("name"), str):
                    found.add(target["name"])
        if found:
            return sorted(found)
        rows = conn.execute(select(BundleBlob.target).where(
            BundleBlob.name == name, BundleBlob.version == version).distinct())
        return sorted({str(r[0]) for r in rows if r[0]})


def deploy_challenger(store: Any, *, registry: Path, entry: Entry, champion: int, fleet: str,
                      stages: Sequence[float], soak_s: float = 30.0,
                      gates: dict[str, Any] | None = None, run_id: int | None = None,
                      out_dir: Path, target: str | None = None, sign_key: Path | None = None,
                      console: Console | None = None) -> dict[str, Any]:
    """Package ``entry`` for the champion's target and create its deployment; its id etc."""
    from sqlalchemy import select, update

    from edgeml.fleet.db import store_errors
    from edgeml.fleet.deploys import create_deployment
    from edgeml.fleet.schema import Device, RetrainRun
    from edgeml.package.builder import package

    if target is None:
        targets = champion_targets(store, entry.name, champion, fleet)
        if not targets:
            raise UsageError(f"no device of {fleet!r} reports the target it runs {entry.name} "
                             f"on and no bundle of {entry.name}@{champion} is in the fleet "
                             "store: give --target")
        if len(targets) > 1:
            raise UsageError(f"{entry.name}@{champion} was deployed for several targets "
                             f"({', '.join(targets)}); give --target (one rollout per target)")
        target = targets[0]
    with store_errors(store.url), store.engine.connect() as conn:
        devices = sorted(str(r[0]) for r in conn.execute(select(Device.device).where(
            Device.fleet == fleet, Device.model_name == entry.name)))
    if not devices:
        raise UsageError(f"no device of fleet {fleet!r} runs {entry.name}")
    built = package(entry.ref, target=target, registry=registry, out_dir=out_dir,
                    sign_key=sign_key, console=console or Console(stderr=True))
    promote = {"registry": str(Path(registry).resolve()), "name": entry.name,
               "version": entry.version, "champion": champion, "run_id": run_id}
    ident = create_deployment(store, built.path, fleet, devices=devices, stages=stages,
                              soak_s=soak_s, gates=gates, details={"promote": promote})
    if run_id is not None:
        with store_errors(store.url), store.engine.begin() as conn:
            conn.execute(update(RetrainRun).where(RetrainRun.id == run_id)
                         .values(deployment_id=ident))
    return {"deployment": ident, "bundle": str(built.path), "target": target,
            "devices": devices, "stages": list(stages)}


def deploy_retrained(result: Any, *, db: str | None, registry: Path, fleet: str,
                     stages: str | Sequence[float], soak_s: float = 30.0,
                     target: str | None = None, out_dir: Path = Path("dist"),
                     sign_key: Path | None = None) -> dict[str, Any]:
    """``retrain --deploy``: roll out a retrained challenger (``RetrainResult``) to ``fleet``."""
    from edgeml.fleet.db import open_store
    from edgeml.fleet.deploys import parse_stages
    from edgeml.train.registry import parse_ref

    if result.entry is None or result.state != "registered":
        raise UsageError(f"{result.ref or result.parent}: not deployed: the retraining was "
                         f"{result.state} ({result.reason})")
    _, champion = parse_ref(result.parent)
    assert champion is not None
    store = open_store(db)
    try:
        return deploy_challenger(store, registry=registry, entry=result.entry, champion=champion,
                                 fleet=fleet, stages=parse_stages(stages), soak_s=soak_s,
                                 run_id=result.run_id, out_dir=out_dir, target=target,
                                 sign_key=sign_key)
    finally:
        store.dispose()
