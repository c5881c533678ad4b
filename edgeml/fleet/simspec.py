"""What the simulator feeds its devices: input samplers, drift and decay specifications.

``--drift`` SPEC: comma-separated ``key=value``: ``feature`` (required), one or more of
``shift=+8`` (add), ``scale=1.5`` (multiply), ``swap=a:b`` (exchange two categories), and
``from=120`` (simulated seconds after the start, default 0), ``fraction=0.1`` (of the
devices, default 1). ``--decay`` SPEC: ``accuracy=0.5,from=300,fraction=0.1``: feedback
labels agree with the model that often on those devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeml.errors import UsageError
from edgeml.runtime.features import OTHER

__all__ = ["CsvSampler", "DecaySpec", "DriftSpec", "ReferenceSampler", "SelfTestSampler",
           "parse_pairs"]


def parse_pairs(text: str, what: str, allowed: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise UsageError(f"{what} {text!r}: {part!r} is not key=value")
        if key not in allowed:
            raise UsageError(f"{what} {text!r}: unknown key {key!r} (use {', '.join(sorted(allowed))})")
        out[key] = value
    return out


def _float(pairs: dict[str, str], key: str, default: float, what: str) -> float:
    try:
        return float(pairs[key]) if key in pairs else default
    except ValueError:
        raise UsageError(f"{what}: {key}={pairs[key]!r} is not a number") from None


def _fraction(pairs: dict[str, str], what: str) -> float:
    f = _float(pairs, "fraction", 1.0, what)
    if not 0.0 <= f <= 1.0:
        raise UsageError(f"{what}: fraction={f} must be between 0 and 1")
    return f


@dataclass(frozen=True)
class DriftSpec:
    feature: str
    shift: float = 0.0
    scale: float = 1.0
    swap: tuple[str, str] | None = None
    start: float = 0.0
    fraction: float = 1.0

    @classmethod
    def parse(cls, text: str) -> DriftSpec:
        what = "--drift"
        pairs = parse_pairs(text, what, {"feature", "shift", "scale", "swap", "from", "fraction"})
        if "feature" not in pairs:
            raise UsageError(f"{what} {text!r}: feature= is required")
        swap = None
        if "swap" in pairs:
            a, sep, b = pairs["swap"].partition(":")
            if not sep or not a or not b:
                raise UsageError(f"{what} {text!r}: swap= takes two categories, swap=a:b")
            swap = (a, b)
        spec = cls(pairs["feature"], _float(pairs, "shift", 0.0, what), _float(pairs, "scale", 1.0, what),
                   swap, _float(pairs, "from", 0.0, what), _fraction(pairs, what))
        if spec.shift == 0.0 and spec.scale == 1.0 and spec.swap is None:
            raise UsageError(f"{what} {text!r}: give shift=, scale= or swap=")
        return spec

    def check(self, manifest: Any) -> None:
        kinds = {s.name: s.kind for s in manifest.inputs}
        if self.feature not in kinds:
            raise UsageError(f"--drift: {self.feature!r} is not an input of {manifest.ref} "
                             f"(inputs: {', '.join(kinds)})")
        numeric = kinds[self.feature] == "numeric"
        if self.swap is not None and numeric:
            raise UsageError(f"--drift: swap= needs a categorical feature; {self.feature} is numeric")
        if self.swap is None and not numeric:
            raise UsageError(f"--drift: shift=/scale= need a numeric feature; {self.feature} is "
                             f"{kinds[self.feature]}")

    def apply(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        col = columns[self.feature]
        if self.swap is None:
            columns[self.feature] = (col.astype(np.float64) * self.scale + self.shift).astype(col.dtype)
        else:
            a, b = self.swap
            out = col.copy()
            out[col == a] = b
            out[col == b] = a
            columns[self.feature] = out
        return columns


@dataclass(frozen=True)
class DecaySpec:
    accuracy: float
    start: float = 0.0
    fraction: float = 1.0

    @classmethod
    def parse(cls, text: str) -> DecaySpec:
        what = "--decay"
        pairs = parse_pairs(text, what, {"accuracy", "from", "fraction"})
        acc = _float(pairs, "accuracy", -1.0, what)
        if not 0.0 <= acc <= 1.0:
            raise UsageError(f"{what} {text!r}: accuracy= between 0 and 1 is required")
        return cls(acc, _float(pairs, "from", 0.0, what), _fraction(pairs, what))


def _draw(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices drawn with probabilities proportional to ``weights`` (one searchsorted)."""
    cdf = np.cumsum(weights, dtype=np.float64)
    idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return np.minimum(idx, len(weights) - 1)


class ReferenceSampler:
    """Rows drawn feature by feature from the manifest's reference profile.

    Numeric: a bin with the reference's share, then uniform inside it (outer bins are
    bounded by the training min and max); categorical: the reference frequencies; both
    missing at the reference's missing rate. Features are independent.
    """

    def __init__(self, manifest: Any) -> None:
        profile = manifest.reference_profile.get("features") or {}
        self.columns: list[tuple[str, str, dict[str, Any], str]] = []
        for spec in manifest.inputs:
            ref = profile.get(spec.name) or {}
            if not ref:
                raise UsageError(f"{manifest.ref}: the reference profile has no {spec.name!r}; "
                                 "use --inputs selftest")
            self.columns.append((spec.name, spec.kind, ref, spec.dtype))

    @staticmethod
    def _numeric(ref: dict[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
        edges = [float(e) for e in ref.get("bin_edges") or []]
        counts = np.asarray(ref.get("counts") or [], dtype=float)
        lo_raw, hi_raw = ref.get("min"), ref.get("max")
        lo = float(lo_raw) if lo_raw is not None else (edges[0] if edges else 0.0)
        hi = float(hi_raw) if hi_raw is not None else (edges[-1] if edges else 1.0)
        bounds = [lo, *edges, hi] if ref.get("binning") == "quantile" else edges or [lo, hi]
        if counts.size != len(bounds) - 1 or counts.sum() <= 0:
            counts = np.ones(len(bounds) - 1)
        b = _draw(counts, n, rng)
        left = np.asarray(bounds[:-1])[b]
        right = np.asarray(bounds[1:])[b]
        return np.asarray(left + (right - left) * rng.random(n), dtype=np.float64)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, kind, ref, _dtype in self.columns:
            missing = rng.random(n) < float(ref.get("missing_rate") or 0.0)
            if kind == "numeric":
                values = self._numeric(ref, n, rng)
                values[missing] = np.nan
                out[name] = values
            elif kind == "categorical":
                freq = {k: float(v) for k, v in (ref.get("frequencies") or {}).items() if k != OTHER}
                cats = list(freq) or [""]
                p = np.asarray([freq.get(c, 1.0) for c in cats])
                values = np.asarray(cats, dtype=object)[_draw(p, n, rng)]
                values[missing] = ""
                out[name] = values
            else:
                lengths = np.clip(self._numeric({**ref, "bin_edges": ref.get("length_bin_edges"),
                                                 "counts": ref.get("length_counts")}, n, rng), 0, 10_000)
                out[name] = np.asarray(["x" * int(k) for k in lengths], dtype=object)
        return out


class SelfTestSampler:
    """Rows drawn with replacement from the bundle's self-test rows (at most 16 of them)."""

    def __init__(self, predictor: Any) -> None:
        import json

        from edgeml.bundle.derive import derive_rows
        from edgeml.bundle.manifest import SELFTEST

        raw = json.loads(predictor.bundle.read(SELFTEST))
        rows = derive_rows(predictor.manifest.derived, raw.get("rows") or [])  # raw timestamps
        self._rows = _RowSampler(rows,
                                 {s.name: s.kind for s in predictor.manifest.inputs},
                                 "the bundle's self-test")

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self._rows.sample(n, rng)


class _RowSampler:
    """Rows drawn with replacement from a list of row dicts, as feed columns."""

    def __init__(self, rows: list[dict[str, Any]], kinds: dict[str, str], what: str) -> None:
        if not rows:
            raise UsageError(f"{what} has no rows to draw from")
        missing = sorted(set(kinds) - set(rows[0]))
        if missing:
            raise UsageError(f"{what} has no column {missing[0]!r} (the model needs "
                             f"{', '.join(kinds)})")
        self.columns: dict[str, np.ndarray] = {}
        for name, kind in kinds.items():
            values = [r.get(name) for r in rows]
            if kind == "numeric":
                self.columns[name] = np.asarray([_to_float(v) for v in values], dtype=np.float64)
            else:
                self.columns[name] = np.asarray(["" if v is None else str(v) for v in values],
                                                dtype=object)
        self.n = len(rows)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = rng.integers(0, self.n, size=n)
        return {name: col[idx] for name, col in self.columns.items()}


def _to_float(value: Any) -> float:
    if value is None or value == "":
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class CsvSampler(_RowSampler):
    """Rows drawn with replacement from a CSV file (e.g. the recipe's data); extra columns are ignored."""

    def __init__(self, path: Any, manifest: Any) -> None:
        import csv
        from pathlib import Path

        p = Path(path)
        try:
            with p.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as exc:
            raise UsageError(f"--inputs {p}: cannot read it: {exc.strerror}") from exc
        super().__init__(rows, {s.name: s.kind for s in manifest.inputs}, f"--inputs {p}")
