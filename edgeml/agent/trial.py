"""The trial of a new version: what it served, and the health gates that commit or roll back.

:class:`MeteredStats` is a :class:`~edgeml.runtime.stats.RuntimeStats` that also counts, for
the whole life of one served version (telemetry windows reset, this does not), its
prediction requests, their errors and a bounded sample of latencies. The agent gives one to
every version it serves, so after a soak the new version's meter is judged against the old
one's (:func:`judge`) with the deployment's :class:`~edgeml.agent.protocol.Gates`:

- error rate: errors / requests of the new version above ``max_error_rate`` *and* above
  the old version's rate fails (with fewer than ``min_requests`` requests it is not judged);
- latency: the new p95 over the old p95 above ``max_p95_ratio`` fails (both sides need
  ``min_requests`` successful predictions).

The self-test is run again by the agent (:func:`edgeml.bundle.verify.verify_bundle`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeml.agent.protocol import Gates
from edgeml.runtime.commands import ENDPOINT as MQTT_INFER
from edgeml.runtime.oip import E_INFER, E_PREDICT
from edgeml.runtime.stats import RuntimeStats

__all__ = ["MeterSnapshot", "MeteredStats", "TrialMeter", "judge"]

_PREDICTION_ENDPOINTS = frozenset((E_PREDICT, E_INFER, MQTT_INFER))
_LATENCIES = 4096


@dataclass(frozen=True)
class MeterSnapshot:
    ok: int
    errors: int
    p95_ms: float | None

    @property
    def requests(self) -> int:
        return self.ok + self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "p95_ms": self.p95_ms}


class TrialMeter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok = 0
        self.errors = 0
        self._latencies: deque[float] = deque(maxlen=_LATENCIES)

    def success(self, latency_s: float) -> None:
        with self._lock:
            self.ok += 1
            self._latencies.append(latency_s)

    def error(self) -> None:
        with self._lock:
            self.errors += 1

    def snapshot(self) -> MeterSnapshot:
        with self._lock:
            lat = list(self._latencies)
            ok, errors = self.ok, self.errors
        p95 = float(np.percentile(np.asarray(lat), 95)) * 1000.0 if lat else None
        return MeterSnapshot(ok, errors, p95)


class MeteredStats(RuntimeStats):
    """RuntimeStats plus a :class:`TrialMeter` for the version's whole life."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meter = TrialMeter()

    def record(self, endpoint: str, latency_s: float, feeds: Any, prediction: Any,
               source: str = "http") -> None:
        super().record(endpoint, latency_s, feeds, prediction, source)
        self.meter.success(latency_s)

    def record_error(self, endpoint: str, kind: str) -> None:
        super().record_error(endpoint, kind)
        if endpoint in _PREDICTION_ENDPOINTS or endpoint.startswith("/v2/models/"):
            self.meter.error()


def judge(new: MeterSnapshot, old: MeterSnapshot | None, gates: Gates) -> str | None:
    """The reason the new version fails its gates, or None when it passes."""
    if new.requests >= gates.min_requests:
        old_rate = old.error_rate if old is not None and old.requests else 0.0
        if new.error_rate > gates.max_error_rate and new.error_rate > old_rate:
            return (f"error rate {new.error_rate:.1%} over {new.requests} requests is above "
                    f"{gates.max_error_rate:.1%} (the old version: {old_rate:.1%})")
    if (old is not None and new.ok >= gates.min_requests and old.ok >= gates.min_requests
            and new.p95_ms is not None and old.p95_ms):
        ratio = new.p95_ms / old.p95_ms
        if ratio > gates.max_p95_ratio:
            return (f"p95 latency {new.p95_ms:.2f} ms is {ratio:.1f}x the old version's "
                    f"{old.p95_ms:.2f} ms (at most {gates.max_p95_ratio:g}x)")
    return None
