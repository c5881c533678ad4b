"""``explore``: profile a dataset before writing a recipe for it.

For each column: kind (as ``train`` would infer it), missing share, statistics
(mean, std, min, quartiles, max) or top values, and a distribution. With a target:
class balance or target statistics, the association of every feature with the target
(Pearson r or correlation ratio eta for numeric targets; eta or Cramér's V for class
targets), Pearson correlations between numeric features, and hints:

- ``leakage``: a feature that alone predicts the target almost perfectly (3-fold CV of
  a small tree on a numeric feature, of a per-value lookup on a categorical one);
- ``id_like``: (nearly) every value distinct, like a row id or a serial number;
- ``constant``: a single value (or none); ``missing``: more than half missing.

Rendering lives in :mod:`edgeml.train.explore_report` (terminal tables, HTML report).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeml.train.data import infer_task, prepare
from edgeml.train.recipe import DataSpec
from edgeml.train.reference import column_stats, missing_mask
from edgeml.train.sources import EXTENSIONS, read_source, sqlite_tables

__all__ = ["LEAKAGE_SCORE", "ExploreResult", "Hint", "explore"]

LEAKAGE_SCORE = 0.98  # CV balanced accuracy / R² of a single feature that counts as leakage
ID_LIKE_SHARE = 0.95  # distinct values / present values above which a column looks like an id
MISSING_HINT = 0.5
LEAKAGE_ROWS = 5000


@dataclass(frozen=True)
class Hint:
    kind: str  # leakage | id_like | constant | missing
    column: str
    message: str


@dataclass(frozen=True, eq=False)
class ExploreResult:
    source: str
    rows: int
    dropped_missing_target: int
    target: str | None
    task: str | None  # classification | regression (inferred), None without a target
    kinds: dict[str, str]
    columns: dict[str, dict[str, Any]]  # column -> statistics (profile.column_stats)
    target_stats: dict[str, Any] | None
    class_balance: dict[str, int] | None
    association: dict[str, dict[str, Any]]  # feature -> {"measure", "value"}
    correlations: dict[str, dict[str, float | None]]  # numeric feature pairs, Pearson r
    hints: list[Hint] = field(default_factory=list)
    report: Path | None = None
    frame: pd.DataFrame | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "frame"}
        out["report"] = str(self.report) if self.report else None
        return out


def _num(value: Any) -> float | None:
    v = float(value)
    return v if np.isfinite(v) else None


def _eta(values: np.ndarray, groups: np.ndarray) -> float | None:
    """Correlation ratio: share of the variance of ``values`` explained by ``groups`` (sqrt)."""
    ok = np.isfinite(values)
    values, groups = values[ok], groups[ok]
    if values.size < 2:
        return None
    total = float(((values - values.mean()) ** 2).sum())
    if total == 0:
        return None
    frame = pd.DataFrame({"v": values, "g": groups})
    stats = frame.groupby("g", sort=False)["v"].agg(["mean", "count"])
    between = float((stats["count"] * (stats["mean"] - values.mean()) ** 2).sum())
    return _num(np.sqrt(between / total))


def _cramers_v(a: pd.Series, b: pd.Series) -> float | None:
    table = pd.crosstab(a, b).to_numpy(dtype=float)
    n = table.sum()
    if n == 0 or min(table.shape) < 2:
        return None
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return _num(np.sqrt(chi2 / n / (min(table.shape) - 1)))


def _association(x: pd.Series, kind: str, y: pd.Series, task: str) -> dict[str, Any]:
    present = ~missing_mask(x, kind)
    x, y = x[present], y[present]
    if kind == "numeric":
        xv = x.to_numpy(dtype=float)
        if task == "regression":
            yv = y.to_numpy(dtype=float)
            r = np.corrcoef(xv, yv)[0, 1] if xv.size > 1 and xv.std() > 0 and yv.std() > 0 else np.nan
            return {"measure": "pearson_r", "value": _num(r)}
        return {"measure": "eta", "value": _eta(xv, y.astype(str).to_numpy())}
    if task == "regression":
        return {"measure": "eta", "value": _eta(y.to_numpy(dtype=float), x.astype(str).to_numpy())}
    return {"measure": "cramers_v", "value": _cramers_v(x.astype(str), y.astype(str))}


def _single_feature_score(x: pd.Series, kind: str, y: pd.Series, task: str, seed: int = 0) -> float | None:
    """3-fold CV score of predicting ``y`` from ``x`` alone (balanced accuracy or R²)."""
    from sklearn.metrics import balanced_accuracy_score, r2_score
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    classify = task == "classification"
    yv = y.astype(str).to_numpy() if classify else y.to_numpy(dtype=float)
    if classify and pd.Series(yv).value_counts().min() < 3:
        return None
    folds = (StratifiedKFold if classify else KFold)(3, shuffle=True, random_state=seed)
    scores = []
    for train, test in folds.split(np.zeros(len(yv)), yv if classify else None):
        if kind == "numeric":
            xv = x.to_numpy(dtype=float).reshape(-1, 1)
            tree = (DecisionTreeClassifier if classify else DecisionTreeRegressor)(max_depth=4, random_state=seed)
            pred = tree.fit(xv[train], yv[train]).predict(xv[test])
        else:
            keys = x.astype(str).to_numpy()
            table = pd.DataFrame({"k": keys[train], "y": yv[train]})
            if classify:
                lookup = table.groupby("k")["y"].agg(lambda s: s.value_counts().index[0])
                fallback: Any = pd.Series(yv[train]).value_counts().index[0]
            else:
                lookup = table.groupby("k")["y"].mean()
                fallback = float(np.mean(yv[train]))
            pred = pd.Series(keys[test]).map(lookup).fillna(fallback).to_numpy()
            if not classify:
                pred = pred.astype(float)
        score = balanced_accuracy_score(yv[test], pred) if classify else r2_score(yv[test], pred)
        scores.append(float(score))
    return _num(np.mean(scores))


def _hints(frame: pd.DataFrame, kinds: dict[str, str], columns: dict[str, dict[str, Any]],
           target: str | None, task: str | None) -> list[Hint]:
    hints: list[Hint] = []
    n = len(frame)
    for name, kind in kinds.items():
        st = columns[name]
        present = st["count"] - st["missing"]
        if st["distinct"] <= 1:
            what = "has no values" if present == 0 else "holds a single value"
            hints.append(Hint("constant", name, f"'{name}' {what}: it cannot help; drop it"))
            continue
        if st["missing"] > MISSING_HINT * n:
            hints.append(Hint("missing", name, f"'{name}' is {st['missing_pct']:.0f}% missing"))
        if present >= 20 and st["distinct"] >= ID_LIKE_SHARE * present and kind != "text":
            series = frame[name]
            if kind == "numeric":
                values = series.dropna().to_numpy(dtype=float)
                monotonic = bool(np.all(np.diff(values) > 0) or np.all(np.diff(values) < 0))
                dense = values.max() - values.min() + 1 <= 1.5 * values.size
                if not (np.all(values == np.round(values)) and (monotonic or dense)):
                    continue
            hints.append(Hint("id_like", name, f"'{name}' looks like an identifier "
                              f"({st['distinct']} distinct values in {present} rows): drop it"))
    if target is None or task is None:
        return hints
    sample = frame if len(frame) <= LEAKAGE_ROWS else frame.sample(LEAKAGE_ROWS, random_state=0)
    flagged = {h.column for h in hints if h.kind in ("constant", "id_like")}
    measure = "balanced accuracy" if task == "classification" else "R²"
    for name, kind in kinds.items():
        if kind == "text" or name in flagged:
            continue
        score = _single_feature_score(sample[name], kind, sample[target], task)
        if score is not None and score >= LEAKAGE_SCORE:
            hints.append(Hint("leakage", name, (
                f"'{name}' alone predicts '{target}' with {measure} {score:.3f} (3-fold CV): "
                "possible target leakage; drop it unless it is known at prediction time")))
    return hints


def _correlations(frame: pd.DataFrame, numeric: list[str]) -> dict[str, dict[str, float | None]]:
    if len(numeric) < 2:
        return {}
    corr = frame[numeric].astype(float).corr(method="pearson", min_periods=3)
    return {a: {b: _num(corr.loc[a, b]) for b in numeric} for a in numeric}


def explore(data: str | Path, *, target: str | None = None, report: Path | None = None,
            table: str | None = None) -> ExploreResult:
    """Profile ``data`` (a csv/parquet/jsonl/sqlite file or ``sklearn:NAME``); optional HTML report.

    For a SQLite file, ``table`` names the table (not needed when the file has only one).
    """
    source = str(data)
    path = Path(source.removeprefix("sqlite:"))
    if table is None and (source.startswith("sqlite:") or EXTENSIONS.get(path.suffix.lower()) == "sqlite"):
        tables = sqlite_tables(path) if path.is_file() else []
        table = tables[0] if len(tables) == 1 else None
    raw = read_source(DataSpec(source=source, table=table), Path.cwd())
    if target is None and source.startswith("sklearn:") and "target" in raw.frame.columns:
        target = "target"
    task = None
    if target is not None and target in raw.frame.columns:
        task = infer_task(raw.frame[target], raw.label_names.get(target))
    ds = prepare(raw, DataSpec(source=source, target=target), task=task or "classification", strict=False)
    frame = ds.frame
    columns = {name: column_stats(frame[name], kind) for name, kind in ds.kinds.items()}
    target_stats = class_balance = None
    association: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant columns, tiny classes: reported as None
        if target is not None and task is not None:
            y = frame[target]
            if task == "classification":
                counts = y.astype(str).value_counts()
                class_balance = {str(k): int(v) for k, v in counts.items()}
            else:
                target_stats = column_stats(y, "numeric")
            association = {
                name: _association(frame[name], kind, y, task)
                if kind != "text" else {"measure": "none (text)", "value": None}
                for name, kind in ds.kinds.items()
            }
        numeric = [n for n, k in ds.kinds.items() if k == "numeric"]
        correlations = _correlations(frame, numeric)
        hints = _hints(frame, ds.kinds, columns, target, task)
    result = ExploreResult(
        source=ds.source, rows=len(frame), dropped_missing_target=ds.dropped_missing_target,
        target=target, task=task, kinds=dict(ds.kinds), columns=columns,
        target_stats=target_stats, class_balance=class_balance, association=association,
        correlations=correlations, hints=hints, frame=frame,
    )
    if report is not None:
        from edgeml.train.explore_report import write_explore_report

        path = write_explore_report(Path(report), result)
        result = replace(result, report=path)
    return result
