"""Opt-in, rate-limited capture of live inputs with their predictions.

:class:`Sampler` is registered as a :class:`~edgeml.runtime.stats.RuntimeStats` observer
``(feeds, prediction, latency_s, source)``. On the prediction hot path it only draws a
random number per row and appends a reference to an in-memory deque (bounded): no JSON,
no disk, no network. The telemetry agent's thread calls :meth:`Sampler.drain`, which turns
the captured rows into ``edgeml.sample/1`` records with a fresh uuid.

A row is kept with probability ``rate`` and at most ``max_per_minute`` per minute (token
bucket, bursts up to ``max_per_minute``). When the bucket is empty the sampler takes itself
off the observer list, and the agent puts it back (:meth:`Sampler.refresh`, every tick)
once a token is due: under load, the hot path does not even call it most of the time.
Device-safe: standard library and numpy only.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np

__all__ = ["SAMPLE_SCHEMA", "Sampler", "iso_utc"]

_monotonic = time.monotonic

SAMPLE_SCHEMA = "edgeml.sample/1"


def iso_utc(ts: float) -> str:
    """``2026-11-28T17:00:00.123Z``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _json_value(value: Any) -> Any:
    if isinstance(value, np.float32):  # shortest repr: 0.2, not 0.20000000298023224
        f32 = float(str(value))
        return None if math.isnan(f32) or math.isinf(f32) else f32
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _cell(values: Any, i: int) -> Any:
    if isinstance(values, np.ndarray):
        return _json_value(values.reshape(values.shape[0], -1)[i, 0])
    return _json_value(values[i])


class Sampler:
    """A RuntimeStats observer that keeps a random, rate-limited subset of rows."""

    def __init__(
        self,
        rate: float,
        max_per_minute: int = 60,
        *,
        capacity: int = 256,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample rate {rate} must be between 0 and 1")
        if max_per_minute < 0:
            raise ValueError("max_per_minute must be >= 0")
        self.rate = float(rate)
        self.max_per_minute = int(max_per_minute)
        self.enabled = self.rate > 0 and self.max_per_minute > 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._tokens = float(max_per_minute)
        self._refill_at = time.monotonic()
        self._blocked_until = 0.0  # monotonic time before which no token can be available
        # log(1 - rate): the gap between two kept rows is geometric (rate < 1 only)
        self._log_keep = math.log1p(-self.rate) if 0.0 < self.rate < 1.0 else -math.inf
        self._buffer: deque[tuple[float, Mapping[str, Any], Any, int]] = deque(maxlen=capacity)
        self.captured_total = 0
        self.rate_limited_total = 0
        self._observers: list[Any] | None = None

    # -- registration ---------------------------------------------------------------

    def attach(self, observers: list[Any]) -> None:
        """Register on ``observers`` (RuntimeStats.observers); no-op when disabled."""
        if self.enabled:
            self._observers = observers
            observers.append(self)

    def detach(self) -> None:
        self._pause()
        self._observers = None

    def refresh(self) -> None:
        """Back on the observer list once a token is due (called by the agent thread)."""
        observers = self._observers
        if observers is not None and self not in observers and _monotonic() >= self._blocked_until:
            observers.append(self)

    def _pause(self) -> None:
        observers = self._observers
        if observers is not None:
            with contextlib.suppress(ValueError):  # another thread was first
                observers.remove(self)

    def __call__(self, feeds: Mapping[str, Any], prediction: Any, latency_s: float, source: str) -> None:
        # Hot path. While the bucket is empty (the usual state under load) this is one
        # clock read; otherwise one random draw per call, plus a lock only for kept rows.
        if not self.enabled or _monotonic() < self._blocked_until:
            return
        rate = self.rate
        if rate >= 1.0:
            index = 0
        else:  # geometric skip: O(kept rows), not O(rows), for big batches
            u = self._rng.random()
            if u >= rate and len(prediction) == 1:
                return  # batch of 1: kept iff u < rate (what the skip below gives), no log()
            index = int(math.log(1.0 - u) / self._log_keep)
        n = len(prediction)
        if index >= n:
            return
        now = time.time()
        with self._lock:
            while index < n:
                if not self._take_token():
                    self.rate_limited_total += 1
                    break
                self._buffer.append((now, feeds, prediction, index))
                self.captured_total += 1
                index += 1 if rate >= 1.0 else 1 + int(
                    math.log(1.0 - self._rng.random()) / self._log_keep
                )

    def _take_token(self) -> bool:
        mono = time.monotonic()
        per_second = self.max_per_minute / 60.0
        self._tokens = min(
            float(self.max_per_minute), self._tokens + (mono - self._refill_at) * per_second
        )
        self._refill_at = mono
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            if self._tokens < 1.0:  # that was the last one: pause until the next is due
                self._blocked_until = mono + (1.0 - self._tokens) / per_second
                self._pause()
            return True
        self._blocked_until = mono + (1.0 - self._tokens) / per_second
        self._pause()
        return False

    def drain(self) -> list[dict[str, Any]]:
        """Captured rows as ``{"id", "ts", "features", "prediction"}`` (oldest first)."""
        out: list[dict[str, Any]] = []
        rows_cache: dict[int, tuple[Any, list[dict[str, Any]]]] = {}
        while True:
            try:
                ts, feeds, prediction, i = self._buffer.popleft()
            except IndexError:
                return out
            key = id(prediction)
            if key not in rows_cache:  # keep the object with its rows: ids stay unique
                rows_cache[key] = (prediction, prediction.rows() if hasattr(prediction, "rows") else [])
            rows = rows_cache[key][1]
            out.append(
                {
                    "id": str(uuid.uuid4()),
                    "ts": iso_utc(ts),
                    "features": {name: _cell(values, i) for name, values in feeds.items()},
                    "prediction": rows[i] if i < len(rows) else {},
                }
            )
