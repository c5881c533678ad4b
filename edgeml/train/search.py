"""Model selection: one hyper-parameter search per candidate, ranked into a leaderboard.

For each recipe candidate the pipeline from :mod:`edgeml.train.pipeline` is searched over
``model__<param>`` with ``GridSearchCV`` (``search.method: grid``), ``RandomizedSearchCV``
(``random``, ``n_iter`` capped at the grid size) or ``HalvingGridSearchCV`` (``halving``),
using the recipe's scoring (default ``f1_macro`` for classification, ``r2`` for
regression) and ``n_jobs``. Nothing is refitted here: the workflow refits the winner once
on the whole training split.

Anomaly detection (``isolation_forest``): when the data has a label column (1 = anomaly,
0 = normal), candidates are cross-validated on it with ``f1`` (or ``precision``/``recall``)
of "predicted anomaly" vs the label. Without labels there is nothing to score: every
candidate keeps its *first* value of each parameter, CV columns are null, and the *first*
candidate wins.

Warnings raised while fitting (e.g. ``ConvergenceWarning``) are collected per candidate
and reported, not raised (only those raised in this process: with ``n_jobs`` > 1 or a
cluster backend, the workers' warnings stay in the workers).

Where the fits run (``search.backend``): ``local`` (this machine, ``n_jobs`` workers), or
``dask`` / ``ray``: the fits of every candidate go to an existing cluster through joblib's
backend of that name (``joblib.parallel_config``), with ``n_jobs`` 1 meaning "every worker
of the cluster". The candidates, their grids and the CV splits are the same objects, seeded
by ``split.seed``, and joblib returns the results in order, so the leaderboard equals a
local run's (``tests/test_search_dask.py``). An unreachable scheduler is a RecipeError on
``search.scheduler`` (exit 2) after ``search.connect_timeout`` seconds (10).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.experimental import enable_halving_search_cv  # noqa: F401  (enables the import below)
from sklearn.metrics import f1_score, get_scorer_names, precision_score, recall_score
from sklearn.model_selection import (
    GridSearchCV,
    HalvingGridSearchCV,
    ParameterGrid,
    RandomizedSearchCV,
)

from edgeml.errors import EdgeMLError, RecipeError
from edgeml.train.pipeline import build_pipeline
from edgeml.train.recipe import Recipe
from edgeml.train.steps import get_family

__all__ = ["SearchResult", "default_scoring", "resolve_scoring", "search", "summarize_warnings", "validate_scoring"]

DEFAULT_SCORING = {"classification": "f1_macro", "regression": "r2", "anomaly": "f1"}


def _anomaly_scorer(metric: Callable[..., float]) -> Callable[[Any, Any, Any], float]:
    def score(estimator: Any, X: Any, y: Any) -> float:
        flagged = (np.asarray(estimator.predict(X)) == -1).astype(int)
        return float(metric(np.asarray(y).astype(int), flagged, zero_division=0))

    return score


ANOMALY_SCORERS: dict[str, Callable[[Any, Any, Any], float]] = {
    "f1": _anomaly_scorer(f1_score),
    "precision": _anomaly_scorer(precision_score),
    "recall": _anomaly_scorer(recall_score),
}


@dataclass(frozen=True)
class SearchResult:
    """The leaderboard and the winner (an unfitted pipeline with the best params set)."""

    leaderboard: list[dict[str, Any]]  # rank, family, params, cv_mean, cv_std, fit_time_s
    best_family: str
    best_params: dict[str, Any]  # recipe names (without the model__ prefix)
    best_pipeline: Any
    best_cv_mean: float | None
    best_cv_std: float | None
    scoring: str | None  # None: anomaly without labels (nothing scored)
    warnings: dict[str, list[str]] = field(default_factory=dict)  # family#i -> messages


def default_scoring(task: str) -> str:
    return DEFAULT_SCORING[task]


def resolve_scoring(recipe: Recipe) -> tuple[str, Any]:
    """The scoring name and what scikit-learn's searches take for it."""
    path = recipe.path or "<recipe>"
    name = recipe.search.scoring or default_scoring(recipe.task)
    if recipe.task == "anomaly":
        if name not in ANOMALY_SCORERS:
            raise RecipeError(
                path,
                f"{name!r} is not available for anomaly; use one of {', '.join(ANOMALY_SCORERS)}",
                "search.scoring",
            )
        return name, ANOMALY_SCORERS[name]
    if name not in get_scorer_names():
        common = (
            "accuracy, balanced_accuracy, f1_macro, f1_weighted, precision_macro, recall_macro, "
            "roc_auc_ovr, neg_log_loss"
            if recipe.task == "classification"
            else "r2, neg_mean_absolute_error, neg_root_mean_squared_error, "
            "neg_mean_absolute_percentage_error"
        )
        raise RecipeError(
            path,
            f"unknown scoring {name!r}; common for {recipe.task}: {common} "
            "(all: sklearn.metrics.get_scorer_names())",
            "search.scoring",
        )
    return name, name


def validate_scoring(recipe: Recipe) -> None:
    resolve_scoring(recipe)


def _first_point(params: Mapping[str, list[Any]]) -> dict[str, Any]:
    return {k: v[0] for k, v in params.items()}


def _num(x: Any) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


@contextmanager
def _backend(recipe: Recipe, console: Console) -> Iterator[int]:
    """Run the block on the recipe's ``search.backend``; yields the searches' ``n_jobs``."""
    s = recipe.search
    path = recipe.path or "<recipe>"
    problem = s.problem()
    if problem is not None:  # a Recipe built without parse_recipe
        raise RecipeError(path, problem[1], problem[0])
    if s.backend == "local":
        yield s.n_jobs
        return
    from joblib import parallel_config

    n_jobs = -1 if s.n_jobs == 1 else s.n_jobs
    if s.backend == "dask":
        from distributed import Client

        try:
            client = Client(s.scheduler, timeout=s.connect_timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise RecipeError(path, f"cannot reach the Dask scheduler at {s.scheduler} "
                              f"(waited {s.connect_timeout:g} s): {exc}",
                              "search.scheduler") from exc
        try:
            workers = len(client.scheduler_info().get("workers", {}))
            console.print(f"  searching on dask {s.scheduler} ({workers} worker(s))",
                          highlight=False, markup=False)
            with parallel_config(backend="dask"):
                yield n_jobs
        finally:
            client.close()
        return
    import ray  # (backend ray: only accepted when ray is importable)
    from ray.util.joblib import register_ray

    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=s.scheduler)
        except (ConnectionError, OSError, TimeoutError, RuntimeError) as exc:
            raise RecipeError(path, f"cannot reach the Ray cluster at {s.scheduler or 'auto'}: "
                              f"{exc}", "search.scheduler") from exc
        started = True
    register_ray()
    console.print(f"  searching on ray {s.scheduler or 'auto'}", highlight=False, markup=False)
    try:
        with parallel_config(backend="ray"):
            yield n_jobs
    finally:
        if started:
            ray.shutdown()


def _make_search(recipe: Recipe, pipe: Any, grid: dict[str, list[Any]], scorer: Any,
                 cv: Any, n_jobs: int) -> Any:
    s = recipe.search
    common: dict[str, Any] = {
        "scoring": scorer, "cv": cv, "n_jobs": n_jobs, "refit": False, "error_score": "raise",
    }
    if s.method == "random":
        size = len(ParameterGrid(grid))
        return RandomizedSearchCV(
            pipe, grid, n_iter=min(s.n_iter, size), random_state=recipe.split.seed, **common
        )
    if s.method == "halving":
        return HalvingGridSearchCV(pipe, grid, factor=3, random_state=recipe.split.seed, **common)
    return GridSearchCV(pipe, grid, **common)


def _n_fits(recipe: Recipe, grid: dict[str, list[Any]], cv: Any) -> int:
    size = len(ParameterGrid(grid))
    if recipe.search.method == "random":
        size = min(size, recipe.search.n_iter)
    n_splits = cv.get_n_splits() if hasattr(cv, "get_n_splits") else int(cv)
    return size * n_splits


def summarize_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """Unique one-line "Category: message" strings, in order of first appearance."""
    seen: dict[str, None] = {}
    for w in caught:
        seen.setdefault(f"{w.category.__name__}: {str(w.message).splitlines()[0]}", None)
    return list(seen)


def search(recipe: Recipe, X: pd.DataFrame, y: pd.Series | None, kinds: Mapping[str, str],
           cv: Any, *, console: Console | None = None,
           sample_weight: Any = None) -> SearchResult:
    """Search every candidate of ``recipe`` on the training part; rank them.

    ``sample_weight`` (one weight per row of ``X``) is passed to the model step's ``fit``
    (``model__sample_weight``, split with the folds); every candidate must accept it.
    """
    console = console or Console(stderr=True)
    path = recipe.path or "<recipe>"
    task, seed = recipe.task, recipe.split.seed
    unscored = task == "anomaly" and y is None
    scoring_name, scorer = (None, None) if unscored else resolve_scoring(recipe)
    rows: list[dict[str, Any]] = []
    pipes: list[Any] = []
    notes: dict[str, list[str]] = {}
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )
    with _backend(recipe, console) as n_jobs, progress:
        bar = progress.add_task("searching", total=len(recipe.candidates))
        for i, cand in enumerate(recipe.candidates):
            fam = get_family(cand.family, task, path=path, where=f"candidates[{i}].family")
            pipe = build_pipeline(recipe, kinds, fam.make(task, seed))
            prefix = fam.param_prefix(task)
            grid = {prefix + k: list(v) for k, v in cand.params.items()}
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if unscored:
                    params = _first_point(cand.params)
                    pipe.set_params(**{prefix + k: v for k, v in params.items()})
                    row: dict[str, Any] = {"family": cand.family, "params": params,
                                           "cv_mean": None, "cv_std": None, "fit_time_s": None}
                    line = "not scored (no labels): first values kept"
                else:
                    n_fits = _n_fits(recipe, grid, cv)
                    progress.update(bar, description=f"{cand.family} ({n_fits} fits)")
                    searcher = _make_search(recipe, pipe, grid, scorer, cv, n_jobs)
                    try:
                        if sample_weight is None:
                            searcher.fit(X, y)
                        else:
                            searcher.fit(X, y, model__sample_weight=np.asarray(sample_weight))
                    except EdgeMLError:
                        raise
                    except (ValueError, TypeError, IndexError) as exc:
                        raise RecipeError(
                            path, f"{cand.family}: fitting failed: {exc}", f"candidates[{i}]"
                        ) from exc
                    res, best = searcher.cv_results_, int(searcher.best_index_)
                    params = {k.removeprefix(prefix): v for k, v in res["params"][best].items()}
                    pipe.set_params(**res["params"][best])
                    row = {"family": cand.family, "params": params,
                           "cv_mean": _num(res["mean_test_score"][best]),
                           "cv_std": _num(res["std_test_score"][best]),
                           "fit_time_s": round(float(res["mean_fit_time"][best]), 4)}
                    line = (f"{scoring_name} {row['cv_mean']:.4f} ± {row['cv_std']:.4f}"
                            f"  ({n_fits} fits, {time.perf_counter() - t0:.1f} s)")
            msgs = summarize_warnings(caught)
            if msgs:
                notes[f"{cand.family}#{i}"] = msgs
                line += f"  [{len(msgs)} warning(s): {msgs[0][:80]}]"
            console.print(f"  [{i + 1}/{len(recipe.candidates)}] {cand.family}: {line}",
                          highlight=False, markup=False, soft_wrap=True)
            rows.append(row)
            pipes.append(pipe)
            progress.advance(bar)

    order = sorted(range(len(rows)), key=lambda j: (rows[j]["cv_mean"] is None,
                                                     -(rows[j]["cv_mean"] or 0.0), j))
    leaderboard = [{"rank": r + 1, **rows[j]} for r, j in enumerate(order)]
    win = order[0]
    return SearchResult(
        leaderboard=leaderboard,
        best_family=rows[win]["family"],
        best_params=rows[win]["params"],
        best_pipeline=pipes[win],
        best_cv_mean=rows[win]["cv_mean"],
        best_cv_std=rows[win]["cv_std"],
        scoring=scoring_name,
        warnings=notes,
    )
