"""What happens to the registry when a deployment that ships a retrained model ends.

The rollout controller calls :func:`finished` when a deployment reaches a final state
(``completed``, ``halted``, ``rolled_back``, ``cancelled``). A deployment started for a
retrained model carries ``details["promote"]`` = ``{"registry": DIR, "name": NAME,
"version": V, "run_id": ID | null}``; for it:

- ``completed``: the ``champion`` alias of NAME moves to V (the ``challenger`` alias is
  removed when it pointed at V); the retrain_runs row becomes ``promoted``;
- any other final state: the champion stays; the row becomes ``halted`` with the
  deployment's reason.

Deployments without ``details["promote"]`` are left alone. Calling it twice is harmless.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

__all__ = ["finished"]

FINAL = ("completed", "halted", "rolled_back", "cancelled")


def finished(store: Any, deployment: Any) -> None:
    """Called once per deployment reaching a final state (see the module docstring)."""
    from sqlalchemy import update

    from edgeml.fleet.db import store_errors
    from edgeml.fleet.schema import RetrainRun
    from edgeml.train.registry import Registry

    promote = (getattr(deployment, "details", None) or {}).get("promote")
    state = getattr(deployment, "state", None)
    if not isinstance(promote, dict) or state not in FINAL:
        return
    name, version = str(promote["name"]), int(promote["version"])
    run_id = promote.get("run_id")
    if state == "completed":
        reg = Registry(promote["registry"])
        reg.set_alias(name, "champion", version)
        if reg.aliases(name).get("challenger") == version:
            reg.set_alias(name, "challenger", None)
        run_state, reason = "promoted", f"deployment {deployment.id} completed: {name}@{version} " \
                                        "is the champion"
    else:
        run_state = "halted"
        reason = f"deployment {deployment.id} {state}: {getattr(deployment, 'reason', None) or '-'}" \
                 "; the champion stays"
    if run_id is None:
        return
    with store_errors(store.url), store.engine.begin() as conn:
        conn.execute(update(RetrainRun).where(RetrainRun.id == int(run_id)).values(
            state=run_state, reason=reason, deployment_id=deployment.id,
            finished_at=datetime.now(timezone.utc)))
