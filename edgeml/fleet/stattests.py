"""Drift statistics on binned counts: small registered functions, vectorised over rows.

Every statistic compares the reference's expected proportions ``ref`` (shape ``[bins]``)
with the live counts ``cur`` of many groups at once (shape ``[groups, bins]``: one row per
device, model version or fleet) and returns one score per group. Each is registered with
a name, the feature kinds it accepts, default watch/alert thresholds and a direction
(``"higher"``: a higher score is worse; ``"lower"``: a lower one, as p-values)::

    psi       numeric, text, prediction   population stability index      watch 0.1, alert 0.25
    ks        numeric, text, prediction   Kolmogorov-Smirnov D at the bin edges (a lower bound
                                          on the exact D) and its asymptotic p-value: watch p < 0.05
    js        categorical, prediction     Jensen-Shannon distance (base 2, in [0, 1]): alert 0.1
    chi2      categorical, prediction     chi-square goodness of fit p-value: watch p < 0.05

The p-value tests say "watch" only by default: over a fleet's hour of data they reject for
differences too small to matter, so alarms come from the effect sizes (PSI, JS distance).
Rates (missing, out of range) are judged in :mod:`edgeml.fleet.drift`. The values are
pinned against scipy in ``tests/test_fleet_stattests.py``; this module needs numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeml.errors import UsageError

__all__ = ["EPS", "REGISTRY", "StatTest", "chi2_sf", "get", "kolmogorov_sf", "register"]

EPS = 1e-4  # floor of a proportion (an empty bin) in PSI, as Evidently does

Kernel = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class StatTest:
    """A registered drift statistic (see the module docstring)."""

    name: str
    kinds: frozenset[str]
    watch: float | None
    alert: float | None
    direction: str  # "higher" | "lower": which way is worse
    func: Kernel
    description: str

    def __call__(self, ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
        ref = np.asarray(ref, dtype=np.float64)
        cur = np.atleast_2d(np.asarray(cur, dtype=np.float64))
        if cur.shape[-1] != ref.shape[-1]:
            raise ValueError(f"{self.name}: {cur.shape[-1]} live bins but {ref.shape[-1]} reference bins")
        return self.func(ref, cur)

    def breached(self, value: float, threshold: float | None) -> bool:
        if threshold is None or not math.isfinite(value):
            return False
        return value >= threshold if self.direction == "higher" else value < threshold


REGISTRY: dict[str, StatTest] = {}


def register(name: str, kinds: tuple[str, ...], *, watch: float | None, alert: float | None,
             direction: str = "higher") -> Callable[[Kernel], Kernel]:
    """Register a statistic; a second registration of the same name is an error."""
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction {direction!r} must be 'higher' or 'lower'")

    def deco(func: Kernel) -> Kernel:
        if name in REGISTRY:
            raise ValueError(f"drift statistic {name!r} is already registered")
        doc = (func.__doc__ or "").strip().splitlines()
        REGISTRY[name] = StatTest(name, frozenset(kinds), watch, alert, direction, func,
                                  doc[0] if doc else name)
        return func

    return deco


def get(name: str) -> StatTest:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown drift statistic {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def _proportions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / np.where(total > 0, total, 1), 0.0), total[..., 0]


def _normalise(ref: np.ndarray) -> np.ndarray:
    s = ref.sum()
    return ref / s if s > 0 else np.full_like(ref, 1.0 / max(len(ref), 1))


@register("psi", ("numeric", "text", "prediction"), watch=0.1, alert=0.25)
def psi(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Population stability index: sum((a - e) * ln(a / e)), proportions floored at 1e-4."""
    e = np.maximum(_normalise(ref), EPS)
    a, n = _proportions(cur)
    a = np.maximum(a, EPS)
    out = ((a - e) * np.log(a / e)).sum(axis=-1)
    return np.where(n > 0, out, np.nan)


def kolmogorov_sf(x: np.ndarray) -> np.ndarray:
    """P(K > x) of the Kolmogorov distribution (scipy.special.kolmogorov)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.ones_like(x)
    big = x > 0.2
    xs = x[big]
    k = np.arange(1, 101, dtype=np.float64)[:, None]
    terms = 2.0 * ((-1.0) ** (k - 1)) * np.exp(-2.0 * k * k * xs * xs)
    out[big] = np.clip(terms.sum(axis=0), 0.0, 1.0)
    return out


def ks_statistic(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """KS D at the bin edges: max |F_ref - F_cur| over the cumulative bin proportions."""
    e = _normalise(ref)
    a, n = _proportions(cur)
    d = np.abs(np.cumsum(a, axis=-1) - np.cumsum(e))[..., :-1].max(axis=-1, initial=0.0)
    return np.where(n > 0, d, np.nan)


@register("ks", ("numeric", "text", "prediction"), watch=0.05, alert=None, direction="lower")
def ks(ref: np.ndarray, cur: np.ndarray, ref_rows: float = math.inf) -> np.ndarray:
    """Kolmogorov-Smirnov p-value from the binned D (asymptotic, reference as a large sample)."""
    d = ks_statistic(ref, cur)
    n = cur.sum(axis=-1)
    m = ref_rows
    eff = n if not math.isfinite(m) else n * m / (n + m)
    return np.where(n > 0, kolmogorov_sf(np.nan_to_num(d) * np.sqrt(eff)), np.nan)


@register("js", ("categorical", "prediction"), watch=0.05, alert=0.1)
def js(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance, base 2 (scipy.spatial.distance.jensenshannon(p, q, base=2))."""
    e = _normalise(ref)
    a, n = _proportions(cur)
    m = 0.5 * (a + e)
    with np.errstate(divide="ignore", invalid="ignore"):
        ka = np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / np.where(m > 0, m, 1)), 0.0)
        ke = np.where(e > 0, e * np.log2(np.where(e > 0, e, 1) / np.where(m > 0, m, 1)), 0.0)
    div = np.maximum(0.5 * (ka.sum(axis=-1) + ke.sum(axis=-1)), 0.0)
    return np.where(n > 0, np.sqrt(div), np.nan)


def _gammaincc(a: float, x: np.ndarray) -> np.ndarray:
    """Regularised upper incomplete gamma Q(a, x) (Numerical Recipes: series / continued fraction)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.ones_like(x)
    lg = math.lgamma(a)
    low = (x > 0) & (x < a + 1)
    if low.any():
        xs = x[low]
        term = np.full_like(xs, 1.0 / a)
        total = term.copy()
        ap = a
        for _ in range(1000):
            ap += 1.0
            term = term * xs / ap
            total += term
            if (np.abs(term) < np.abs(total) * 1e-15).all():
                break
        out[low] = 1.0 - total * np.exp(-xs + a * np.log(xs) - lg)
    high = x >= a + 1
    if high.any():
        xs = x[high]
        tiny = 1e-300
        b = xs + 1.0 - a
        c = np.full_like(xs, 1.0 / tiny)
        d = 1.0 / b
        h = d.copy()
        for i in range(1, 1000):
            an = -i * (i - a)
            b = b + 2.0
            d = an * d + b
            d = np.where(np.abs(d) < tiny, tiny, d)
            c = b + an / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            d = 1.0 / d
            delta = d * c
            h = h * delta
            if (np.abs(delta - 1.0) < 1e-15).all():
                break
        out[high] = np.exp(-xs + a * np.log(xs) - lg) * h
    return np.clip(out, 0.0, 1.0)


def chi2_sf(x: np.ndarray, df: int) -> np.ndarray:
    """P(X > x) for a chi-square with ``df`` degrees of freedom (scipy.stats.chi2.sf)."""
    return _gammaincc(df / 2.0, np.asarray(x, dtype=np.float64) / 2.0)


def chi2_statistic(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Pearson's statistic sum((o - E)^2 / E), E from the reference floored at 1e-4 (unseen bins)."""
    e = np.maximum(_normalise(ref), EPS)
    e = e / e.sum()
    n = cur.sum(axis=-1, keepdims=True)
    expected = e * n
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n[..., 0] > 0, ((cur - expected) ** 2 / expected).sum(axis=-1), np.nan)


@register("chi2", ("categorical", "prediction"), watch=0.05, alert=None, direction="lower")
def chi2(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Chi-square goodness-of-fit p-value of the live counts against the reference shares."""
    stat = chi2_statistic(ref, cur)
    df = max(ref.shape[-1] - 1, 1)
    return np.where(np.isfinite(stat), chi2_sf(np.nan_to_num(stat), df), np.nan)
