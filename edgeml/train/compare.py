"""Challenger against champion: paired scores on the same holdouts, and the decision.

Both models predict the same rows of each holdout (the recipe's holdout, and the newest
labelled field rows, held out of training). Per holdout:

- ``delta``: the improvement of the challenger on the comparison metric (the champion's
  ``metrics.primary``), challenger − champion, or champion − challenger for metrics where lower
  is better (mae, rmse, mape): positive always means "the challenger is better";
- ``ci_low``/``ci_high``: a 95 % paired bootstrap interval of ``delta`` (the same resampled
  rows score both models; 1000 resamples, seed 0, so a rerun gives the same interval);
- ``mcnemar_p`` (classification): the exact McNemar test on which rows each model gets right
  (a two-sided binomial test on the discordant pairs).

Decision: the challenger is ``challenger`` when it is not worse on the recipe holdout by more
than ``margin`` (``delta >= -margin``, in the metric's units) **and** better on the field
holdout (``ci_low > 0``: the whole interval above zero). Otherwise ``rejected``, with the
numbers in the reason.

The metrics computed here match scikit-learn's (labels present in either array, zero division
-> 0); a primary metric not listed in :data:`METRICS` (ROC AUC, log loss: they need
probabilities) falls back to accuracy, r2 or f1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["LOWER_IS_BETTER", "METRICS", "compare_holdouts", "comparison_metric", "decide", "paired",
           "predict_for"]

LOWER_IS_BETTER = frozenset({"mae", "rmse", "mape"})
N_BOOT = 1000
SEED = 0
FALLBACK = {"classification": "accuracy", "regression": "r2", "anomaly": "f1"}


def _prf(y: np.ndarray, p: np.ndarray, average: str) -> tuple[float, float, float]:
    labels = np.union1d(y, p)
    prec, rec, f1, sup = [], [], [], []
    for lab in labels:
        tp = float(np.sum((p == lab) & (y == lab)))
        fp = float(np.sum((p == lab) & (y != lab)))
        fn = float(np.sum((p != lab) & (y == lab)))
        pr = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        prec.append(pr)
        rec.append(rc)
        f1.append(2 * pr * rc / (pr + rc) if pr + rc else 0.0)
        sup.append(tp + fn)
    w = np.asarray(sup) / max(sum(sup), 1.0) if average == "weighted" else None
    return (float(np.average(prec, weights=w)), float(np.average(rec, weights=w)),
            float(np.average(f1, weights=w)))


def _prf_metric(index: int, average: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(y: np.ndarray, p: np.ndarray) -> float:
        return _prf(y, p, average)[index]
    return score


def _balanced(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean([np.mean(p[y == lab] == lab) for lab in np.unique(y)]))


def _binary(index: int) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(y: np.ndarray, p: np.ndarray) -> float:
        flagged = (p == -1).astype(int)
        tp = float(np.sum((flagged == 1) & (y == 1)))
        fp = float(np.sum((flagged == 1) & (y == 0)))
        fn = float(np.sum((flagged == 0) & (y == 1)))
        pr = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        return (pr, rc, 2 * pr * rc / (pr + rc) if pr + rc else 0.0)[index]
    return score


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    ss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - p) ** 2)) / ss if ss else 0.0


METRICS: dict[str, dict[str, Callable[[np.ndarray, np.ndarray], float]]] = {
    "classification": {
        "accuracy": lambda y, p: float(np.mean(y == p)),
        "balanced_accuracy": _balanced,
        **{f"{m}_{avg}": _prf_metric(i, avg) for avg in ("macro", "weighted")
           for i, m in enumerate(("precision", "recall", "f1"))},
    },
    "regression": {
        "mae": lambda y, p: float(np.mean(np.abs(y - p))),
        "rmse": lambda y, p: float(np.sqrt(np.mean((y - p) ** 2))),
        "r2": _r2,
        "mape": lambda y, p: float(np.mean(np.abs(y - p) / np.maximum(np.abs(y), 1e-12))),
    },
    "anomaly": {"precision": _binary(0), "recall": _binary(1), "f1": _binary(2)},
}


def comparison_metric(task: str, primary: str | None) -> str:
    """The metric challenger and champion are compared on."""
    return primary if primary in METRICS[task] else FALLBACK[task]


def predict_for(task: str, pipeline: Any, X: Any) -> np.ndarray:
    pred = np.asarray(pipeline.predict(X))
    if task == "classification":
        return np.asarray([str(v) for v in pred], dtype=object)
    if task == "regression":
        return pred.astype(float).ravel()
    return pred.astype(int).ravel()


def _truth(task: str, y: Any) -> np.ndarray:
    if task == "classification":
        return np.asarray([str(v) for v in y], dtype=object)
    return np.asarray(y, dtype=float if task == "regression" else int).ravel()


def _mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> float:
    from scipy.stats import binomtest

    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    if b + c == 0:
        return 1.0
    return float(binomtest(min(b, c), b + c, 0.5).pvalue)


def paired(task: str, metric: str, y: Any, champion: np.ndarray, challenger: np.ndarray, *,
           holdout: str, n_boot: int = N_BOOT, seed: int = SEED) -> dict[str, Any]:
    """One ``HoldoutComparison`` (see model.json): scores, delta, its bootstrap CI, McNemar."""
    score = METRICS[task][metric]
    truth = _truth(task, y)
    if task == "classification":  # integer codes: the same metrics, much faster to resample
        _, codes = np.unique(np.concatenate([truth, champion, challenger]).astype(str),
                             return_inverse=True)
        n0 = len(truth)
        truth, champion, challenger = codes[:n0], codes[n0:2 * n0], codes[2 * n0:]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    n = len(truth)
    out: dict[str, Any] = {"holdout": holdout, "rows": n, "metric": metric,
                           "higher_is_better": sign > 0, "champion": None, "challenger": None,
                           "delta": None, "ci_low": None, "ci_high": None, "mcnemar_p": None}
    if n == 0:
        return out
    a, b = score(truth, champion), score(truth, challenger)
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        t = truth[idx]
        deltas[i] = sign * (score(t, challenger[idx]) - score(t, champion[idx]))
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    out.update(champion=a, challenger=b, delta=sign * (b - a), ci_low=float(lo), ci_high=float(hi))
    if task == "classification":
        out["mcnemar_p"] = _mcnemar(truth == champion, truth == challenger)
    return out


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def decide(recipe: dict[str, Any], field: dict[str, Any], margin: float) -> tuple[str, str]:
    """``("challenger" | "rejected", reason)`` from the two holdout comparisons."""
    metric = field["metric"]
    field_txt = (f"field holdout {metric} {_num(field['delta'])} (95% CI {_num(field['ci_low'])}"
                 f" .. {_num(field['ci_high'])}, {field['rows']} rows)")
    recipe_txt = f"recipe holdout {metric} {_num(recipe['delta'])} ({recipe['rows']} rows)"
    if recipe["delta"] is None or recipe["delta"] < -margin:
        return "rejected", (f"worse on the recipe holdout beyond the margin {margin:g}: "
                            f"{recipe_txt}; {field_txt}")
    if field["ci_low"] is None or not field["ci_low"] > 0:
        return "rejected", (f"not better on the field holdout (the interval does not lie above "
                            f"0): {field_txt}; {recipe_txt}")
    return "challenger", f"better on the {field_txt}; {recipe_txt} (margin {margin:g})"


def compare_holdouts(champion: Any, challenger: Any) -> dict[str, Any]:
    """``edgeml models compare A B``: both models on B's holdouts, paired (A = champion).

    B's recipe holdout (``holdout.parquet``) and, for a retrained B, its field holdout
    (``field_holdout.parquet``). ``{"metric", "holdouts": [...], "note"}``; a model whose
    pipeline or holdout cannot be read gives an empty list and the reason in ``note``.
    """
    import pandas as pd

    from edgeml.errors import RegistryError

    task = challenger.record.task
    metric = comparison_metric(task, champion.record.metrics.primary)
    out: dict[str, Any] = {"champion": champion.ref, "challenger": challenger.ref,
                           "metric": metric, "holdouts": [], "note": None}
    if champion.record.task != task:
        out["note"] = f"different tasks ({champion.record.task}, {task})"
        return out
    try:
        pa, pb = champion.load_pipeline(), challenger.load_pipeline()
        sets = []
        X, y = challenger.load_holdout()
        if y is not None:
            sets.append(("recipe", X, y))
        name = challenger.record.files.field_holdout
        if name:
            frame = pd.read_parquet(challenger.path / name)
            cols = [f.name for f in challenger.record.features]
            target = challenger.record.target.name
            sets.append(("field", frame[cols], frame[target]))
        for holdout, X, y in sets:
            out["holdouts"].append(paired(task, metric, y, predict_for(task, pa, X),
                                          predict_for(task, pb, X), holdout=holdout))
    except (RegistryError, OSError, KeyError, ValueError) as exc:
        out["holdouts"] = []
        out["note"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return out
