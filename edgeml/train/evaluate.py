"""Holdout metrics with the model.json keys, and re-evaluating a registered model on new data.

``evaluate`` returns plain JSON values; a metric that is undefined for the data at hand
(ROC AUC with one class present, log loss without probabilities...) is ``None``.

- classification: accuracy, balanced_accuracy, precision/recall/f1 _macro and _weighted,
  roc_auc_ovr (binary: plain ROC AUC of the second class), log_loss, confusion_matrix
  (rows = true, columns = predicted, in ``classes`` order), per_class;
- regression: mae, rmse, r2, mape;
- anomaly (predictions are scikit-learn's 1 normal / -1 anomaly; labels are 1 anomaly /
  0 normal): anomaly_rate, and with labels precision, recall, f1 (anomaly = positive),
  confusion_matrix ([[tn, fp], [fn, tp]]) and roc_auc (from ``scores``, lower = more anomalous).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.errors import DataError

__all__ = ["evaluate", "evaluate_model", "render_evaluation"]


def _f(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def _classification(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, classes: Sequence[Any] | None
) -> dict[str, Any]:
    from sklearn import metrics as m

    true = np.asarray([str(v) for v in y_true], dtype=object)
    pred = np.asarray([str(v) for v in y_pred], dtype=object)
    known = [str(c) for c in classes] if classes is not None else sorted(set(true) | set(pred))
    labels = known + sorted((set(true) | set(pred)) - set(known))
    p, r, f, support = m.precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    out: dict[str, Any] = {
        "accuracy": _f(m.accuracy_score(true, pred)),
        "balanced_accuracy": _f(m.balanced_accuracy_score(true, pred)),
    }
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = m.precision_recall_fscore_support(true, pred, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = _f(ap), _f(ar), _f(af)
    out["roc_auc_ovr"] = None
    out["log_loss"] = None
    present = sorted(set(true))
    if proba is not None and set(present) <= set(known):
        prob = np.asarray(proba, dtype=float)
        if prob.ndim == 1:  # a binary model's positive-class probability
            prob = np.column_stack([1 - prob, prob])
        if prob.shape[1] == len(known):
            out["log_loss"] = _f(m.log_loss(true, prob, labels=known))
            if len(present) == 2 and len(known) == 2:
                out["roc_auc_ovr"] = _f(m.roc_auc_score(true == known[1], prob[:, 1]))
            elif len(present) == len(known) > 2:
                out["roc_auc_ovr"] = _f(
                    m.roc_auc_score(true, prob, multi_class="ovr", labels=known)
                )
    out["confusion_matrix"] = m.confusion_matrix(true, pred, labels=labels).tolist()
    out["per_class"] = {
        label: {
            "precision": _f(p[i]),
            "recall": _f(r[i]),
            "f1": _f(f[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return out


def _regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    from sklearn import metrics as m

    true, pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float).ravel()
    return {
        "mae": _f(m.mean_absolute_error(true, pred)),
        "rmse": _f(math.sqrt(m.mean_squared_error(true, pred))),
        "r2": _f(m.r2_score(true, pred)) if len(true) >= 2 else None,
        "mape": _f(m.mean_absolute_percentage_error(true, pred)),
    }


def _anomaly(y_true: np.ndarray | None, y_pred: np.ndarray, scores: np.ndarray | None) -> dict[str, Any]:
    from sklearn import metrics as m

    flagged = (np.asarray(y_pred).ravel() == -1).astype(int)
    out: dict[str, Any] = {"anomaly_rate": _f(flagged.mean()) if flagged.size else None}
    if y_true is None:
        return out
    true = np.asarray(y_true).astype(int).ravel()
    p, r, f, _ = m.precision_recall_fscore_support(
        true, flagged, labels=[1], average="binary", pos_label=1, zero_division=0
    )
    out.update(precision=_f(p), recall=_f(r), f1=_f(f))
    out["confusion_matrix"] = m.confusion_matrix(true, flagged, labels=[0, 1]).tolist()
    out["roc_auc"] = None
    if scores is not None and len(set(true.tolist())) == 2:
        out["roc_auc"] = _f(m.roc_auc_score(true, -np.asarray(scores, dtype=float).ravel()))
    return out


def evaluate(
    task: str,
    y_true: Any,
    y_pred: Any,
    *,
    proba: np.ndarray | None = None,
    classes: Sequence[Any] | None = None,
    scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics for ``task`` with the model.json ``metrics.holdout`` keys (see module doc)."""
    pred = np.asarray(y_pred)
    true = None if y_true is None else np.asarray(y_true)
    if true is not None and len(true) != len(pred):
        raise DataError(f"{len(true)} true values but {len(pred)} predictions")
    if len(pred) == 0:
        raise DataError("cannot evaluate on 0 rows")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined metrics come back as None instead
        if task == "classification":
            if true is None:
                raise DataError("classification metrics need the true labels")
            return _classification(true, pred, proba, classes)
        if task == "regression":
            if true is None:
                raise DataError("regression metrics need the true values")
            return _regression(true, pred)
        if task == "anomaly":
            return _anomaly(true, pred, scores)
    raise DataError(f"unknown task {task!r}; expected classification, regression or anomaly")


def _predict(pipeline: Any, task: str, X: Any) -> tuple[Any, Any, Any, Any]:
    """(predictions, probabilities, classes, scores) of a fitted pipeline."""
    pred = pipeline.predict(X)
    proba = classes = scores = None
    if task == "classification":
        classes = [str(c) for c in getattr(pipeline, "classes_", [])] or None
        if hasattr(pipeline, "predict_proba"):
            try:
                proba = pipeline.predict_proba(X)
            except AttributeError:  # e.g. a wrapped model without probabilities
                proba = None
    elif task == "anomaly" and hasattr(pipeline, "decision_function"):
        scores = pipeline.decision_function(X)
    return pred, proba, classes, scores


def evaluate_model(ref: str, *, registry: Path, data: Path | None) -> dict[str, Any]:
    """Re-evaluate a registered model on ``data`` (default: its stored holdout).

    New data goes through the recipe's ``data`` section (drops, declared kinds) and must
    have every feature of the model; the target is needed except for anomaly models.
    Returns ``{"model", "data", "rows", "dropped_missing_target", "metrics", "holdout"}``
    where ``holdout`` holds the metrics recorded at training time for comparison.
    """
    from edgeml.train.data import normalize_features, prepare
    from edgeml.train.recipe import DataSpec
    from edgeml.train.registry import Registry
    from edgeml.train.sources import read_source

    entry = Registry(Path(registry)).resolve(ref)
    meta = entry.meta
    task = str(meta["task"])
    kinds = {f["name"]: f["kind"] for f in meta["features"]}
    target = (meta.get("target") or {}).get("name")
    label = f"{entry.name}@{entry.version}"
    if data is None:
        X, y = entry.load_holdout()
        X = normalize_features(X, kinds, f"{label} holdout")
        source, rows, dropped = f"{label} holdout", len(X), 0
        if y is not None and task == "anomaly":
            y = y.astype(int)
    else:
        spec_raw = dict(meta["recipe"]["data"])
        spec = DataSpec(source=str(data), format="auto", table=spec_raw.get("table"), query=spec_raw.get("query"))
        raw = read_source(spec, Path.cwd(), Path(data))
        order = list(kinds)
        derived = entry.record.derived_inputs()
        options = None
        if derived:  # new data carries the raw timestamps: derive as at training time
            from edgeml.train.recipe import DatetimeSpec

            gone = {n for d in derived for n in d.names}
            kinds = {k: v for k, v in kinds.items() if k not in gone}
            kinds.update({d.source: "datetime" for d in derived})
            first = derived[0]
            if any((d.features, d.timezone) != (first.features, first.timezone) for d in derived):
                raise DataError(f"{label}: its datetime columns derive different features; "
                                "evaluate it on its stored holdout (no --data)")
            options = DatetimeSpec(derive=tuple(first.features), timezone=first.timezone)
        absent = [c for c in kinds if c not in raw.frame.columns]
        if absent:
            raise DataError(
                f"{raw.source}: lacks feature column(s) {', '.join(absent)} that {label} needs; "
                f"columns: {', '.join(map(str, raw.frame.columns))}"
            )
        has_target = target is not None and target in raw.frame.columns
        if not has_target and task != "anomaly":
            raise DataError(f"{raw.source}: no target column '{target}' to evaluate {label} against")
        keep = [*kinds, target] if has_target else list(kinds)
        trimmed = type(raw)(raw.frame[keep], raw.source, raw.sha256, raw.label_names)
        spec = spec.model_copy(update={"target": target if has_target else None, "columns": kinds})
        ds = prepare(trimmed, spec, task=task, strict=False, datetime=options)
        X, y = ds.X[order], ds.y
        source, rows, dropped = ds.source, ds.rows, ds.dropped_missing_target
    pipeline = entry.load_pipeline()
    pred, proba, classes, scores = _predict(pipeline, task, X)
    if classes is None:
        classes = (meta.get("target") or {}).get("classes")
    metrics = evaluate(task, y, pred, proba=proba, classes=classes, scores=scores)
    return {
        "model": label,
        "task": task,
        "data": source,
        "rows": rows,
        "dropped_missing_target": dropped,
        "metrics": metrics,
        "holdout": (meta.get("metrics") or {}).get("holdout", {}),
    }


def render_evaluation(result: dict[str, Any], console: Any) -> None:
    """Print an :func:`evaluate_model` result: metrics next to the training-time holdout ones."""
    from rich.table import Table

    console.print(f"[bold]{result['model']}[/] ({result['task']}) on {result['data']}: "
                  f"{result['rows']} rows", highlight=False)
    if result.get("dropped_missing_target"):
        console.print(f"{result['dropped_missing_target']} rows without a target left out")
    metrics, before = result["metrics"], result.get("holdout") or {}
    table = Table(title="Metrics", title_justify="left")
    for col in ("metric", "now", "at training (holdout)", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, value in metrics.items():
        if isinstance(value, (dict, list)):
            continue
        old = before.get(key)
        change = (f"{value - old:+.4f}" if isinstance(value, (int, float)) and isinstance(old, (int, float))
                  else "-")
        table.add_row(key, "-" if value is None else f"{value:.4f}",
                      "-" if not isinstance(old, (int, float)) else f"{old:.4f}", change)
    console.print(table)
    matrix = metrics.get("confusion_matrix")
    if matrix:
        labels = list(metrics.get("per_class") or {}) or ["normal", "anomaly"]
        cm = Table(title="Confusion matrix (rows: true, columns: predicted)", title_justify="left")
        cm.add_column("")
        for label in labels:
            cm.add_column(label, justify="right")
        for label, row in zip(labels, matrix, strict=False):
            cm.add_row(label, *(str(v) for v in row))
        console.print(cm)
