"""Intra-op threads per model: 1, or the device's cores where they clearly pay.

Most edgeml models (linear models, forests, small MLPs) run in 20-100 µs; a second intra-op
thread only adds hand-off cost there, and onnxruntime's spinning workers take a core away from
concurrent requests. A large MLP at a mid-sized batch is where more threads pay.

So, when the profile says ``threads.intra_op: auto`` (the default), the model is timed on the
packaging host with onnxruntime: 1 intra-op thread against N = the profile's ``cores`` (capped
at the host's usable cores), spinning off as the runtime runs it, on holdout rows at batch 1,
a mid batch (32) and the profile's ``typical_batch``. The two sessions are timed alternately
in short blocks (about 0.5 ms, shorter than a scheduler time slice), so each block of one has a
neighbour of the other taken under the same load; a round's speed-up is the median, over its
pairs of neighbours, of their ratio, and a block hit by another process's time slice moves it
little. N is kept only when it is at least ``MIN_SPEEDUP`` (1.3x) faster at the profile's
typical batch in each of ``ROUNDS`` rounds; otherwise 1. The margin and the unanimity keep
noise on a shared machine from flipping the choice; when in doubt, 1 is the safe one. A number in the profile (``intra_op: 2``) is used as
given, not measured.

The choice lands in the manifest (``runtime.intra_op_threads``); the timings do not (they
would change the bytes between runs), but ``edgeml package --json`` shows them.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeml.package.profiles import DeviceProfile

__all__ = ["MID_BATCH", "MIN_SPEEDUP", "ThreadChoice", "choose", "choose_threads", "host_cores"]

MIN_SPEEDUP = 1.3  # N threads must be this much faster at the typical batch
MID_BATCH = 32
ROUNDS = 3  # N must win each of them
PAIRS = 60  # pairs of neighbouring blocks (1 thread, N threads) per batch size and round
BLOCK_SECONDS = 0.0005  # each block runs the model this long (calibrated on the 1-thread session)


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count that ships, and why."""

    intra_op: int
    inter_op: int
    chosen_by: str  # measured | profile
    reason: str
    candidates: tuple[int, ...] = ()  # (1, N) when measured
    typical_batch: int = 1
    ms: dict[str, dict[int, float]] = field(default_factory=dict)  # "batch 1" -> {threads: median ms}
    gains: tuple[float, ...] = ()  # speed-up of N threads at the typical batch, one per round

    def speedup(self, batch: str) -> float | None:
        """median(1 thread) / median(N threads) at ``batch`` ("batch 1", "batch 32", ...)."""
        got = self.ms.get(batch)
        if not got or len(self.candidates) < 2:
            return None
        one, many = got[self.candidates[0]], got[self.candidates[1]]
        return one / many if many > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "intra_op_threads": self.intra_op,
            "inter_op_threads": self.inter_op,
            "chosen_by": self.chosen_by,
            "reason": self.reason,
            "candidates": list(self.candidates),
            "typical_batch": self.typical_batch,
            "median_ms": {b: {str(t): round(v, 4) for t, v in d.items()} for b, d in self.ms.items()},
            "speedup_per_round": [round(g, 3) for g in self.gains],
        }


def host_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def choose(gains: Sequence[float], *, n: int, batch: int) -> tuple[int, str]:
    """The rule, on the speed-ups of N threads at the typical batch (one per round): N if every
    round is at least MIN_SPEEDUP faster, else 1; with the reason in words."""
    worst, mid = min(gains), statistics.median(gains)
    if worst >= MIN_SPEEDUP:
        return n, f"{n} threads {mid:.2f}x faster at batch {batch} (>= {MIN_SPEEDUP:g}x in every round)"
    if mid >= MIN_SPEEDUP:
        return 1, f"{n} threads {mid:.2f}x faster at batch {batch} but {worst:.2f}x in one round"
    return 1, f"{n} threads only {mid:.2f}x faster at batch {batch} (< {MIN_SPEEDUP:g}x)"


def _session(model: bytes, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if threads > 1:  # as the runtime runs it: no busy-waiting workers
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _batch(feeds: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """The first ``rows`` rows of ``feeds``, repeating the holdout when it has fewer."""
    have = len(next(iter(feeds.values())))
    index = np.arange(rows) % max(have, 1)
    return {k: v[index] for k, v in feeds.items()}


def _blocks(sessions: list[Any], feeds: dict[str, np.ndarray]) -> list[list[float]]:
    """Per-call ms of each session in PAIRS alternating blocks."""
    t0 = time.perf_counter()
    sessions[0].run(None, feeds)
    once = max(time.perf_counter() - t0, 1e-6)
    calls = max(1, min(1000, int(BLOCK_SECONDS / once)))
    blocks: list[list[float]] = [[] for _ in sessions]
    for _ in range(PAIRS):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            for _ in range(calls):
                s.run(None, feeds)
            blocks[i].append((time.perf_counter() - t0) * 1000.0 / calls)
    return blocks


def choose_threads(model: bytes, feeds: dict[str, np.ndarray], profile: DeviceProfile) -> ThreadChoice:
    """Measure and choose (see the module docstring); ``feeds`` are holdout rows as ONNX inputs."""
    inter = profile.threads.inter_op
    fixed = profile.threads.intra_op
    typical = profile.threads.typical_batch
    if fixed != "auto":
        return ThreadChoice(int(fixed), inter, "profile", f"{fixed} from the profile", typical_batch=typical)
    n = min(profile.cores, host_cores())
    if n <= 1:
        why = f"{profile.name} has 1 core" if profile.cores <= 1 else "1 usable core on this host"
        return ThreadChoice(1, inter, "measured", f"not measured: {why}", typical_batch=typical)
    sessions = [_session(model, 1), _session(model, n)]
    sizes = sorted({1, MID_BATCH, typical})
    batches = {rows: _batch(feeds, rows) for rows in sizes}
    for s in sessions:  # warm up: first-run allocations, the thread pool
        for rows in sizes:
            for _ in range(3):
                s.run(None, batches[rows])
    times: dict[int, list[list[float]]] = {rows: [[], []] for rows in sizes}
    gains = []
    for _ in range(ROUNDS):
        for rows in sizes:
            one, many = _blocks(sessions, batches[rows])
            times[rows][0] += one
            times[rows][1] += many
            if rows == typical:
                gains.append(statistics.median(a / max(b, 1e-9) for a, b in zip(one, many, strict=True)))
    ms = {f"batch {rows}": {1: statistics.median(t[0]), n: statistics.median(t[1])}
          for rows, t in times.items()}
    chosen, reason = choose(gains, n=n, batch=typical)
    if chosen > 1 and profile.cores > n:
        chosen = profile.cores
        reason += f" (measured with {n} on this host; {profile.name} has {profile.cores})"
    return ThreadChoice(chosen, inter, "measured", reason, (1, n), typical, ms, tuple(gains))
