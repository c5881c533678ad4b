"""``train``: recipe -> data -> split -> search -> refit -> holdout -> gates -> registry.

1. load and check the recipe (families, params, scoring, gates) before touching data;
2. load the data (``--data`` replaces the recipe's source file);
3. split off the holdout (see :mod:`edgeml.train.split`);
4. search every candidate with cross-validation on the training part;
5. refit the winner once on the whole training part;
6. evaluate it once on the holdout;
7. check the recipe's gates: a failed gate raises GateError and registers nothing;
8. profile the training data, then register model.json, pipeline, holdout and report
   as the next version, atomically.

Same recipe + data + seed gives the same metrics: every random choice is seeded with
``split.seed``.

Class labels: classification targets are strings (``edgeml.train.data`` turns numeric
codes into their ``str``, e.g. ``3`` -> ``"3"``, or into class names for bundled
scikit-learn data), so the pipeline's ``classes_``, ``target.classes`` and the ONNX
labels are all strings, in ``classes_`` (sorted) order.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from edgeml import __version__
from edgeml._files import atomic_write
from edgeml.errors import DataError, GateError, RecipeError
from edgeml.train.model_json import dump_model_json, primary_metric
from edgeml.train.pipeline import validate_features
from edgeml.train.recipe import Recipe, load_recipe
from edgeml.train.registry import Entry, Registry
from edgeml.train.search import resolve_scoring, search
from edgeml.train.search import summarize_warnings as _summarize
from edgeml.train.split import cv_splitter, holdout_split
from edgeml.train.steps import FAMILIES, validate_candidates

__all__ = ["METRICS", "TrainResult", "check_gates", "check_recipe", "train"]

METRICS: dict[str, tuple[str, ...]] = {
    "classification": (
        "accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
        "precision_weighted", "recall_weighted", "f1_weighted", "roc_auc_ovr", "log_loss",
    ),
    "regression": ("mae", "rmse", "r2", "mape"),
    "anomaly": ("anomaly_rate", "precision", "recall", "f1", "roc_auc"),
}
LIBRARIES = ("numpy", "scipy", "scikit-learn", "pandas", "joblib", "xgboost", "lightgbm")


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` produced: the registry entry and the numbers people look at."""

    entry: Entry
    leaderboard: list[dict[str, Any]]
    metrics: dict[str, Any]  # holdout metrics
    gates: list[dict[str, Any]]
    report: Path
    warnings: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return self.entry.ref


def check_recipe(recipe: Recipe) -> None:
    """Everything about a recipe that can be checked without data; RecipeError otherwise."""
    path = recipe.path or "<recipe>"
    validate_candidates(recipe)
    validate_features(recipe)
    resolve_scoring(recipe)
    known = METRICS[recipe.task]
    for gate in recipe.gates:
        if gate.metric not in known:
            raise RecipeError(
                path,
                f"unknown metric {gate.metric!r} for {recipe.task}; use one of {', '.join(known)}",
                f"gates.{gate.metric}",
            )


def check_gates(recipe: Recipe, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{metric, op, threshold, value, passed}]``; a metric that is absent fails its gate."""
    out = []
    for gate in recipe.gates:
        value = metrics.get(gate.metric)
        ok = isinstance(value, (int, float)) and math.isfinite(value) and gate.check(float(value))
        out.append({"metric": gate.metric, "op": gate.op, "threshold": gate.threshold,
                    "value": value, "passed": bool(ok)})
    return out


def predict_outputs(task: str, pipeline: Any, X: pd.DataFrame) -> tuple[Any, dict[str, Any]]:
    """A fitted pipeline's predictions on ``X`` and the extras :func:`evaluate` and the
    reference profile take: ``proba`` and ``classes`` (classifiers), ``scores`` (anomaly)."""
    pred = pipeline.predict(X)
    if task == "classification":
        return pred, {"proba": pipeline.predict_proba(X),
                      "classes": [str(c) for c in pipeline.classes_]}
    if task == "anomaly":
        return pred, {"scores": pipeline.decision_function(X)}
    return pred, {}


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays unwrapped, NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _libraries() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _load(recipe: Recipe, data: Path | None) -> tuple[Any, pd.Series | None]:
    """The dataset, and the time column's values when ``split.time_column`` is set."""
    from edgeml.train.data import load_dataset

    spec, tcol = recipe.data, recipe.split.time_column
    dropped_time = bool(tcol and tcol in spec.drop)
    if dropped_time:  # keep it for ordering, but not as a feature
        spec = spec.model_copy(update={"drop": tuple(c for c in spec.drop if c != tcol)})
    ds = load_dataset(spec, recipe.base_dir, task=recipe.task, override=data,
                      datetime=recipe.features.datetime)
    order = None
    if tcol and ds.raw is not None and tcol in ds.raw.columns:  # a datetime column: its instants
        from edgeml.train.datetimes import epoch_seconds

        timed = next(d for d in ds.derived if d.source == tcol)
        order = epoch_seconds(ds.raw[tcol].tolist(), timed.timezone)
        if dropped_time:
            kinds = {k: v for k, v in ds.kinds.items() if k not in set(timed.names)}
            ds = type(ds)(ds.frame.drop(columns=timed.names), ds.target, kinds, ds.source,
                          ds.sha256, ds.rows, ds.dropped_missing_target,
                          tuple(d for d in ds.derived if d.source != tcol),
                          ds.raw.drop(columns=[tcol]))
    elif tcol:
        if tcol not in ds.frame.columns:
            raise DataError(f"{ds.source}: split.time_column {tcol!r} is not a column of the data")
        order = ds.frame[tcol]
        if dropped_time:
            kinds = {k: v for k, v in ds.kinds.items() if k != tcol}
            ds = type(ds)(ds.frame.drop(columns=[tcol]), ds.target, kinds, ds.source, ds.sha256,
                          ds.rows, ds.dropped_missing_target)
    return ds, order


def _fit(pipeline: Any, X: pd.DataFrame, y: pd.Series | None) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline.fit(X, y)
    return _summarize(caught)


def train(recipe: Recipe | Path | str, *, data: Path | None = None, registry: Path,
          console: Console | None = None) -> TrainResult:
    """Train ``recipe`` and register the winner in ``registry``; see the module docstring."""
    from edgeml.train.data import feature_schema
    from edgeml.train.datetimes import derived_to_meta
    from edgeml.train.evaluate import evaluate
    from edgeml.train.reference import reference_profile
    from edgeml.train.report import write_report

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    check_recipe(recipe)
    console = console or Console(stderr=True)
    task, seed = recipe.task, recipe.split.seed
    t0 = time.perf_counter()

    ds, order = _load(recipe, data)
    kinds = dict(ds.kinds)
    X = ds.frame[list(kinds)]
    y = ds.frame[ds.target] if ds.target else None
    console.print(f"{recipe.name}: {len(X)} rows, {len(kinds)} features from {ds.source}",
                  highlight=False, markup=False, soft_wrap=True)
    split = holdout_split(X, y, recipe.split, task=task, order=order)
    cv = cv_splitter(recipe.split, task=task, y=split.y_train)

    found = search(recipe, split.X_train, split.y_train, kinds, cv, console=console)
    pipeline = found.best_pipeline
    notes = dict(found.warnings)
    refit_notes = _fit(pipeline, split.X_train, split.y_train)
    if refit_notes:
        notes["refit"] = refit_notes

    classes = [str(c) for c in pipeline.classes_] if task == "classification" else None
    pred_hold, kwargs = predict_outputs(task, pipeline, split.X_holdout)
    metrics = _jsonable(evaluate(task, split.y_holdout, pred_hold, **kwargs))
    gates = check_gates(recipe, metrics)
    failed = [g for g in gates if not g["passed"]]
    if failed:
        def shown(v: Any) -> str:
            return f"{v:.4f}" if isinstance(v, (int, float)) else "n/a"

        raise GateError(
            f"{recipe.name}: quality gate(s) not met, nothing registered: "
            + "; ".join(f"{g['metric']} = {shown(g['value'])} (required {g['op']} "
                        f"{g['threshold']:g})" for g in failed)
        )

    profile = reference_profile(split.X_train, kinds, task=task, predictions=pred_hold,
                                proba=kwargs.get("proba"), scores=kwargs.get("scores"),
                                y_true=split.y_holdout)
    fam = FAMILIES[found.best_family]
    meta: dict[str, Any] = {
        "schema_version": 1,
        "name": recipe.name,
        "version": 0,  # set per attempt in write()
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "edgeml_version": __version__,
        "task": task,
        "recipe": recipe.to_dict(),
        "recipe_sha256": recipe.sha256(),
        "data": {
            "source": ds.source, "sha256": ds.sha256, "rows": ds.rows, "rows_used": len(X),
            "dropped_missing_target": ds.dropped_missing_target,
            "train_rows": len(split.X_train), "holdout_rows": len(split.X_holdout),
        },
        "libraries": _libraries(),
        "model": {
            "family": found.best_family, "params": found.best_params,
            "cv_mean": found.best_cv_mean, "cv_std": found.best_cv_std, "scoring": found.scoring,
            "converter": fam.converter,
        },
        "leaderboard": found.leaderboard,
        "metrics": {"holdout": metrics,
                    "primary": primary_metric(task, metrics, found.scoring,
                                              [g.metric for g in recipe.gates])},
        "gates": gates,
        "features": feature_schema(split.X_train, kinds),
        **({"derived": derived_to_meta(ds.derived)} if ds.derived else {}),
        "target": {"name": ds.target, "classes": classes},
        "reference_profile": profile,
        "files": {"pipeline": "pipeline.joblib", "holdout": "holdout.parquet",
                  "report": "report.html"},
    }
    meta = _jsonable(meta)
    holdout = split.X_holdout.copy()
    for d in ds.derived:  # the raw timestamps: the packager feeds them to the device path
        holdout[d.source] = ds.raw.loc[holdout.index, d.source]
    if ds.target and split.y_holdout is not None:
        holdout[ds.target] = split.y_holdout
    holdout = holdout.reset_index(drop=True)

    def write(folder: Path, version: int) -> None:
        import joblib

        meta["version"] = version
        blob = dump_model_json(meta, folder / "model.json")  # validated before any work
        joblib.dump(pipeline, folder / "pipeline.joblib")
        holdout.to_parquet(folder / "holdout.parquet", index=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_report(folder / "report.html", name=recipe.name, version=version, task=task,
                         pipeline=pipeline, X_train=split.X_train, y_train=split.y_train,
                         X_holdout=split.X_holdout, y_holdout=split.y_holdout,
                         metrics=metrics, leaderboard=found.leaderboard, gates=gates,
                         classes=classes, seed=seed)
        if caught:
            notes["report"] = _summarize(caught)
        atomic_write(folder / "model.json", blob)

    entry = Registry(registry).register(recipe.name, write)
    console.print(f"registered {entry.ref} in {time.perf_counter() - t0:.1f} s",
                  highlight=False, markup=False, soft_wrap=True)
    return TrainResult(entry=entry, leaderboard=found.leaderboard, metrics=metrics, gates=gates,
                       report=entry.path / "report.html", warnings=notes)

