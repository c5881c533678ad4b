"""The model a running service serves, swappable while it serves (the deploy agent's hook).

:class:`ModelHolder` holds one :class:`~edgeml.runtime.predictor.Predictor` and its
:class:`~edgeml.runtime.stats.RuntimeStats`. :func:`edgeml.runtime.service.serve` accepts a
holder instead of a bundle path and subscribes the HTTP server and the telemetry agent to
it; :meth:`ModelHolder.swap` then replaces the model in place:

- HTTP (:meth:`edgeml.runtime.http.HttpServer.swap`): every worker gets a new ``App``; a
  request already inside the old one finishes on the old model, the next request (also on
  a kept-alive connection) is answered by the new one. Nothing is refused while it happens.
- telemetry (:meth:`edgeml.runtime.telemetry.DeviceAgent.swap`): the old model's metrics
  window is spooled as it stands (a window never mixes two versions: each version has its
  own ``RuntimeStats``), the sampler moves to the new stats and ``$info`` is republished.

The HTTP limits taken from the first bundle's device profile stay as they were.
Device-safe: standard library only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ModelHolder", "SwapListener"]

# listener(new_predictor, new_stats): called in subscription order, from swap()'s thread
SwapListener = Callable[[Any, Any], None]


class ModelHolder:
    """``ModelHolder(predictor, stats)``; ``swap(new_predictor, new_stats)`` returns the old pair."""

    def __init__(self, predictor: Any, stats: Any = None) -> None:
        if stats is None:
            from edgeml.runtime.stats import RuntimeStats

            stats = RuntimeStats.for_predictor(predictor)
        self.predictor = predictor
        self.stats = stats
        self._listeners: list[SwapListener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: SwapListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: SwapListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def swap(self, predictor: Any, stats: Any = None) -> tuple[Any, Any]:
        """Serve ``predictor`` from now on; returns ``(old_predictor, old_stats)``."""
        if stats is None:
            from edgeml.runtime.stats import RuntimeStats

            stats = RuntimeStats.for_predictor(predictor)
        with self._lock:
            old = (self.predictor, self.stats)
            self.predictor, self.stats = predictor, stats
            for listener in list(self._listeners):
                listener(predictor, stats)
        return old
