"""``retrain``: the recipe's own search on its data plus the labelled field rows, then a
comparison with the champion, a registered version with its lineage, and the run recorded.

1. load and check the recipe; the parent is the ``champion`` alias of the recipe's name, else
   its latest version (then ``champion`` is set to it, so the loop has a champion);
2. claim the ``retrain_runs`` row (``--run-id``, made by the monitor's trigger, must be
   ``running``) or insert one (trigger ``manual``; one running per model);
3. read the field rows (:mod:`edgeml.train.field`), validated against the parent's features;
   fewer valid rows than ``min_labels`` is a :class:`~edgeml.errors.DataError` (exit 2);
4. the newest ``split.holdout`` fraction of the field rows is the *field holdout* (never
   trained on); the recipe's data is split as ``edgeml train`` splits it (same seed);
5. training data = recipe training split + older field rows (``field_only``: the field rows
   alone). Field rows weigh ``field_weight``: passed as ``sample_weight`` when every
   candidate's estimator accepts one, else each field row is repeated ``round(weight)``
   times (at least once); ``lineage.field.weighting`` says which;
6. the recipe's own search, refit, holdout metrics and gates (a failed gate registers nothing:
   state ``rejected``);
7. challenger and champion scored on both holdouts (:mod:`edgeml.train.compare`);
8. the version is registered either way, with ``lineage`` and ``comparison`` in model.json and
   the field holdout in ``field_holdout.parquet``; the ``challenger`` alias moves to it only
   when the decision is ``challenger`` (run state ``registered``), else no alias is set (state
   ``rejected``, the reason has the numbers);
9. the run row gets its state, version, reason, outcome (comparison, lineage) and finished_at.
   Any error on the way marks it ``failed`` with the error's message.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from edgeml import __version__
from edgeml._files import atomic_write
from edgeml.errors import DataError, EdgeMLError, GateError, UsageError
from edgeml.train.model_json import ModelJson, dump_model_json, primary_metric
from edgeml.train.recipe import Recipe, load_recipe
from edgeml.train.registry import Entry, Registry

__all__ = ["RetrainResult", "retrain"]

CHAMPION = "champion"
CHALLENGER = "challenger"
FIELD_HOLDOUT = "field_holdout.parquet"
MIN_FIELD_REFERENCE = 100  # newest field rows from which the drift reference is the field's


@dataclass(frozen=True)
class RetrainResult:
    entry: Entry | None  # None: a gate failed, nothing registered
    parent: str
    state: str  # registered | rejected
    reason: str
    run_id: int | None
    comparison: dict[str, Any] | None
    lineage: dict[str, Any]
    metrics: dict[str, Any]
    leaderboard: list[dict[str, Any]]
    aliases: dict[str, int]

    @property
    def ref(self) -> str | None:
        return self.entry.ref if self.entry else None

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "parent": self.parent, "state": self.state,
                "reason": self.reason, "run_id": self.run_id, "comparison": self.comparison,
                "lineage": self.lineage, "metrics": self.metrics,
                "leaderboard": self.leaderboard, "aliases": self.aliases,
                "path": str(self.entry.path) if self.entry else None}


# -- the retrain_runs row ----------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _start_run(store: Any, model: str, recipe: Recipe, run_id: int | None) -> int:
    from sqlalchemy import insert, select
    from sqlalchemy.exc import IntegrityError

    from edgeml.fleet.db import store_errors
    from edgeml.fleet.schema import RetrainRun

    with store_errors(store.url), store.engine.begin() as conn:
        if run_id is not None:
            row = conn.execute(select(RetrainRun.model_name, RetrainRun.state)
                               .where(RetrainRun.id == run_id)).first()
            if row is None:
                raise UsageError(f"--run-id {run_id}: no such row in retrain_runs")
            if row.model_name != model:
                raise UsageError(f"--run-id {run_id}: is a run of {row.model_name!r}, not {model!r}")
            if row.state != "running":
                raise UsageError(f"--run-id {run_id}: is {row.state}, not running")
            return run_id
        try:
            result = conn.execute(insert(RetrainRun).values(
                model_name=model, recipe=str(recipe.path) if recipe.path else None,
                state="running", trigger="manual", host=socket.gethostname()[:128],
                pid=os.getpid(), started_at=_now()).returning(RetrainRun.id))
            return int(result.scalar_one())
        except IntegrityError:
            raise UsageError(f"a retraining of {model} is already running (see the "
                             "retrain_runs table); wait for it to finish") from None


def _fail_claimed(store: Any, run_id: int, reason: str) -> None:
    """Mark ``run_id`` failed when it is still running (an error before the run began)."""
    from sqlalchemy import update

    from edgeml.fleet.db import store_errors
    from edgeml.fleet.schema import RetrainRun

    with store_errors(store.url), store.engine.begin() as conn:
        conn.execute(update(RetrainRun).where(RetrainRun.id == run_id,
                                              RetrainRun.state == "running")
                     .values(state="failed", reason=reason[:4000], finished_at=_now()))


def _finish_run(store: Any, run_id: int, *, state: str, reason: str | None,
                version: int | None = None, outcome: dict[str, Any] | None = None) -> None:
    from sqlalchemy import update

    from edgeml.fleet.db import store_errors
    from edgeml.fleet.schema import RetrainRun

    with store_errors(store.url), store.engine.begin() as conn:
        conn.execute(update(RetrainRun).where(RetrainRun.id == run_id).values(
            state=state, reason=reason, version=version, outcome=outcome, finished_at=_now()))


# -- helpers -----------------------------------------------------------------------------------


def _parent(reg: Registry, name: str) -> tuple[Entry, bool]:
    """The champion (or the latest version); True when the champion alias had to be set."""
    aliases = reg.aliases(name)
    if CHAMPION in aliases:
        return reg.resolve(f"{name}@{CHAMPION}"), False
    try:
        return reg.resolve(name), True
    except EdgeMLError as exc:
        raise UsageError(f"{exc}; train a first version with: edgeml train RECIPE") from None


def _check_schema(recipe: Recipe, kinds: dict[str, str], parent: ModelJson) -> None:
    theirs = {f.name: f.kind for f in parent.features}
    if theirs != kinds:
        raise UsageError(f"{recipe.name}: the recipe's features {kinds} differ from those of "
                         f"{parent.ref} {theirs}; retrain compares like with like (train a new "
                         "model with edgeml train instead)")


def _supports_weights(recipe: Recipe) -> bool:
    from sklearn.utils.validation import has_fit_parameter

    from edgeml.train.steps import get_family

    for cand in recipe.candidates:
        fam = get_family(cand.family, recipe.task)
        if not has_fit_parameter(fam.make(recipe.task, recipe.split.seed), "sample_weight"):
            return False
    return True


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def _fit(pipeline: Any, X: pd.DataFrame, y: pd.Series, weight: np.ndarray | None) -> list[str]:
    from edgeml.train.search import summarize_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if weight is None:
            pipeline.fit(X, y)
        else:
            pipeline.fit(X, y, model__sample_weight=weight)
    return summarize_warnings(caught)


# -- the run -----------------------------------------------------------------------------------


def retrain(recipe: Recipe | Path | str, *, db: str | None, registry: Path, since: str | None = None,
            min_labels: int = 50, field_weight: float = 1.0, field_only: bool = False,
            margin: float = 0.01, run_id: int | None = None,
            console: Console | None = None) -> RetrainResult:
    """Retrain ``recipe`` with the fleet's labelled rows; see the module docstring."""
    from edgeml.fleet.db import open_store, redact
    from edgeml.train.field import parse_since
    from edgeml.train.workflow import check_recipe

    def prepare(recipe: Recipe | Path | str) -> tuple[Recipe, datetime | None, Entry, bool]:
        if not isinstance(recipe, Recipe):
            recipe = load_recipe(recipe)
        check_recipe(recipe)
        if recipe.task == "anomaly" and not recipe.data.target:
            raise UsageError(f"{recipe.name}: retraining needs labels; the recipe has no "
                             "data.target")
        if min_labels < 1:
            raise UsageError("--min-labels must be >= 1")
        if not (field_weight > 0 and math.isfinite(field_weight)):
            raise UsageError("--field-weight must be a positive number")
        if margin < 0:
            raise UsageError("--margin must be >= 0")
        when = parse_since(since)
        parent, set_champion = _parent(Registry(registry), recipe.name)
        return recipe, when, parent, set_champion

    console = console or Console(stderr=True)
    reg = Registry(registry)
    store = open_store(db)
    try:
        try:
            recipe, when, parent, set_champion = prepare(recipe)
        except BaseException as exc:
            if run_id is not None:  # the trigger's row must not stay "running"
                _fail_claimed(store, run_id, str(exc) or type(exc).__name__)
            raise
        rid = _start_run(store, recipe.name, recipe, run_id)
        try:
            result = _run(recipe, reg, parent, set_champion, store, redact(store.url), when,
                          min_labels, field_weight, field_only, margin, rid, console)
        except BaseException as exc:
            state = "rejected" if isinstance(exc, GateError) else "failed"
            reason = str(exc) or type(exc).__name__
            _finish_run(store, rid, state=state, reason=reason[:4000])
            raise
        outcome = {"ref": result.ref, "parent": result.parent,
                   "comparison": result.comparison, "lineage": result.lineage}
        _finish_run(store, rid, state=result.state, reason=result.reason,
                    version=result.entry.version if result.entry else None, outcome=outcome)
        return result
    finally:
        store.dispose()


def _run(recipe: Recipe, reg: Registry, parent: Entry, set_champion: bool, store: Any,
         db_shown: str, since: datetime | None, min_labels: int, field_weight: float,
         field_only: bool, margin: float, run_id: int, console: Console) -> RetrainResult:
    from edgeml.train.compare import comparison_metric, decide, paired, predict_for
    from edgeml.train.data import feature_schema
    from edgeml.train.evaluate import evaluate
    from edgeml.train.field import load_field_rows
    from edgeml.train.reference import reference_profile
    from edgeml.train.report import write_report
    from edgeml.train.search import search
    from edgeml.train.split import cv_splitter, holdout_split
    from edgeml.train.steps import FAMILIES
    from edgeml.train.workflow import _jsonable, _libraries, _load, check_gates, predict_outputs

    t0 = time.perf_counter()
    task, seed = recipe.task, recipe.split.seed
    ds, order = _load(recipe, None)
    if ds.derived:
        raise UsageError(f"{recipe.name}: retraining recipes with datetime-derived features is "
                         "not supported yet")
    kinds = dict(ds.kinds)
    _check_schema(recipe, kinds, parent.record)
    X = ds.frame[list(kinds)]
    y = ds.frame[ds.target]

    rows = load_field_rows(store, model=recipe.name, features=parent.record.features, task=task,
                           classes=parent.record.classes, since=since)
    excluded = ", ".join(f"{k} {v}" for k, v in rows.excluded.items()) or "none"
    if len(rows) < min_labels:
        raise DataError(f"{recipe.name}: {len(rows)} valid labelled field rows, fewer than "
                        f"--min-labels {min_labels} (excluded: {excluded})")
    console.print(f"{recipe.name}: {len(rows)} valid labelled field rows from {db_shown} "
                  f"(excluded: {excluded})", highlight=False, markup=False, soft_wrap=True)
    n_hold = max(1, math.ceil(len(rows) * recipe.split.holdout))
    if len(rows) - n_hold < 1:
        raise DataError(f"{recipe.name}: {len(rows)} field rows are too few to hold out "
                        f"{recipe.split.holdout:g} of them and train on the rest")
    f_train = rows.take(range(len(rows) - n_hold))
    f_hold = rows.take(range(len(rows) - n_hold, len(rows)))

    split = holdout_split(X, y, recipe.split, task=task, order=order)
    assert split.y_train is not None and split.y_holdout is not None
    if field_weight == 1.0:
        weighting = "none"
    else:
        weighting = "sample_weight" if _supports_weights(recipe) else "duplicate"
    reps = max(1, round(field_weight)) if weighting == "duplicate" else 1
    fx, fy = f_train.X, f_train.y
    if reps > 1:
        fx = pd.concat([fx] * reps, ignore_index=True)
        fy = pd.concat([fy] * reps, ignore_index=True)
    parts_X = [fx] if field_only else [split.X_train.reset_index(drop=True), fx]
    parts_y = [fy] if field_only else [split.y_train.reset_index(drop=True), fy]
    X_train = pd.concat(parts_X, ignore_index=True)
    y_train = pd.concat(parts_y, ignore_index=True)
    if task == "classification":
        y_train = y_train.astype(object)
    weight = None
    if weighting == "sample_weight":
        n_recipe = 0 if field_only else len(split.X_train)
        weight = np.concatenate([np.ones(n_recipe), np.full(len(fx), field_weight)])
    console.print(f"{recipe.name}: training on {len(X_train)} rows "
                  f"({0 if field_only else len(split.X_train)} recipe + {len(fx)} field, "
                  f"weighting {weighting}); holdouts: {len(split.X_holdout)} recipe, "
                  f"{len(f_hold)} field", highlight=False, markup=False, soft_wrap=True)

    cv = cv_splitter(recipe.split, task=task, y=y_train)
    found = search(recipe, X_train, y_train, kinds, cv, console=console, sample_weight=weight)
    pipeline = found.best_pipeline
    notes = dict(found.warnings)
    refit = _fit(pipeline, X_train, y_train, weight)
    if refit:
        notes["refit"] = refit

    classes = [str(c) for c in pipeline.classes_] if task == "classification" else None
    pred_hold, kwargs = predict_outputs(task, pipeline, split.X_holdout)
    metrics = _jsonable(evaluate(task, split.y_holdout, pred_hold, **kwargs))
    gates = check_gates(recipe, metrics)
    failed = [g for g in gates if not g["passed"]]
    if failed:
        raise GateError(
            f"{recipe.name}: quality gate(s) not met on the recipe holdout, nothing registered: "
            + "; ".join(f"{g['metric']} = {g['value']} (required {g['op']} {g['threshold']:g})"
                        for g in failed))

    # champion vs challenger, paired, on both holdouts
    champion_pipe = parent.load_pipeline()
    metric = comparison_metric(task, parent.record.metrics.primary)
    cmp_recipe = paired(task, metric, split.y_holdout, predict_for(task, champion_pipe,
                                                                   split.X_holdout),
                        predict_for(task, pipeline, split.X_holdout), holdout="recipe")
    cmp_field = paired(task, metric, f_hold.y, predict_for(task, champion_pipe, f_hold.X),
                       predict_for(task, pipeline, f_hold.X), holdout="field")
    decision, reason = decide(cmp_recipe, cmp_field, margin)
    comparison = _jsonable({"champion": parent.ref, "metric": metric, "margin": margin,
                            "holdouts": [cmp_recipe, cmp_field], "decision": decision,
                            "reason": reason})
    lineage = _jsonable({
        "parent": parent.ref, "run_id": run_id, "recipe_data_sha256": ds.sha256,
        "recipe_rows": 0 if field_only else len(split.X_train),
        "field": {"db": db_shown, "since": since.strftime("%Y-%m-%dT%H:%M:%SZ") if since else None,
                  "train_rows": len(f_train), "holdout_rows": len(f_hold),
                  "first_ts": _iso(min(rows.ts)) if rows.ts else None,
                  "last_ts": _iso(max(rows.ts)) if rows.ts else None,
                  "devices": sorted(set(rows.devices)), "sha256": rows.sha256,
                  "excluded": rows.excluded, "weight": field_weight, "weighting": weighting,
                  "field_only": field_only}})

    # Drift is judged against what the model will see: the field as it is now (the newest
    # field rows, i.e. the field holdout) once there are enough of them, else the training
    # data. Older field rows may predate the change that made the model retrain.
    if len(f_hold) >= MIN_FIELD_REFERENCE:
        ref_X = f_hold.X.reset_index(drop=True)
        ref_pred, ref_kw = predict_outputs(task, pipeline, f_hold.X)
        profile = reference_profile(ref_X, kinds, task=task, predictions=ref_pred,
                                    proba=ref_kw.get("proba"), scores=ref_kw.get("scores"),
                                    y_true=f_hold.y)
        lineage["reference"] = {"source": "field", "rows": len(ref_X)}
    else:
        profile = reference_profile(X_train, kinds, task=task, predictions=pred_hold,
                                    proba=kwargs.get("proba"), scores=kwargs.get("scores"),
                                    y_true=split.y_holdout)
        lineage["reference"] = {"source": "training", "rows": len(X_train)}
    fam = FAMILIES[found.best_family]
    meta: dict[str, Any] = _jsonable({
        "schema_version": 1, "name": recipe.name, "version": 0,
        "created_at": _now().strftime("%Y-%m-%dT%H:%M:%SZ"), "edgeml_version": __version__,
        "task": task, "recipe": recipe.to_dict(), "recipe_sha256": recipe.sha256(),
        "data": {"source": f"{ds.source} + field rows", "sha256": ds.sha256, "rows": ds.rows,
                 "rows_used": len(X_train), "dropped_missing_target": ds.dropped_missing_target,
                 "train_rows": len(X_train), "holdout_rows": len(split.X_holdout)},
        "libraries": _libraries(),
        "model": {"family": found.best_family, "params": found.best_params,
                  "cv_mean": found.best_cv_mean, "cv_std": found.best_cv_std,
                  "scoring": found.scoring, "converter": fam.converter},
        "leaderboard": found.leaderboard,
        "metrics": {"holdout": metrics,
                    "primary": primary_metric(task, metrics, found.scoring,
                                              [g.metric for g in recipe.gates])},
        "gates": gates, "features": feature_schema(X_train, kinds),
        "target": {"name": ds.target, "classes": classes},
        "reference_profile": profile,
        "files": {"pipeline": "pipeline.joblib", "holdout": "holdout.parquet",
                  "report": "report.html", "field_holdout": FIELD_HOLDOUT},
        "lineage": lineage, "comparison": comparison,
    })
    holdout = split.X_holdout.copy()
    holdout[ds.target] = split.y_holdout
    holdout = holdout.reset_index(drop=True)
    field_frame = f_hold.X.copy()
    field_frame[ds.target] = f_hold.y.values
    field_frame["_ts"] = [_iso(t) for t in f_hold.ts]
    field_frame["_device"] = f_hold.devices

    def write(folder: Path, version: int) -> None:
        import joblib

        from edgeml.train.search import summarize_warnings

        meta["version"] = version
        blob = dump_model_json(meta, folder / "model.json")
        joblib.dump(pipeline, folder / "pipeline.joblib")
        holdout.to_parquet(folder / "holdout.parquet", index=False)
        field_frame.to_parquet(folder / FIELD_HOLDOUT, index=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_report(folder / "report.html", name=recipe.name, version=version, task=task,
                         pipeline=pipeline, X_train=X_train, y_train=y_train,
                         X_holdout=split.X_holdout, y_holdout=split.y_holdout,
                         metrics=metrics, leaderboard=found.leaderboard, gates=gates,
                         classes=classes, seed=seed, comparison=comparison)
        if caught:
            notes["report"] = summarize_warnings(caught)
        atomic_write(folder / "model.json", blob)

    entry = reg.register(recipe.name, write)
    if set_champion:
        reg.set_alias(recipe.name, CHAMPION, parent.version)
    if decision == "challenger":
        reg.set_alias(recipe.name, CHALLENGER, entry.version)
    state = "registered" if decision == "challenger" else "rejected"
    console.print(f"{entry.ref}: {state}: {reason} ({time.perf_counter() - t0:.1f} s)",
                  highlight=False, markup=False, soft_wrap=True)
    return RetrainResult(entry=entry, parent=parent.ref, state=state, reason=reason,
                         run_id=run_id, comparison=comparison, lineage=lineage, metrics=metrics,
                         leaderboard=found.leaderboard, aliases=reg.aliases(recipe.name))
