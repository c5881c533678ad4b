"""Model selection (leaderboard, search methods, anomaly scoring) and the holdout/CV split."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit

from edgeml.errors import DataError, RecipeError
from edgeml.train.recipe import SplitSpec, parse_recipe
from edgeml.train.search import resolve_scoring, search
from edgeml.train.split import cv_splitter, holdout_split

KINDS = {"a": "numeric", "b": "numeric", "c": "categorical"}


def _data(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    c = np.array(["x", "y", ""], dtype=object)[rng.integers(0, 3, n)]
    X = pd.DataFrame({"a": a, "b": b, "c": pd.Series(c, dtype=object)})
    y = pd.Series(np.where(a + 0.5 * b > 0, "pos", "neg"), dtype=object, name="label")
    return X, y


def _recipe(tmp_path: Path, task: str = "classification", **extra: Any) -> Any:
    raw: dict[str, Any] = {"name": "t", "task": task,
                           "data": {"source": "x.csv", "target": None if task == "anomaly" else "y"},
                           "split": {"cv": 3, "seed": 0}, **extra}
    return parse_recipe(raw, tmp_path / "r.yaml")


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200), buf


def test_leaderboard_ranks_candidates(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, candidates=[
        {"family": "naive_bayes"},
        {"family": "logistic_regression", "params": {"C": [0.01, 10.0]}},
        {"family": "decision_tree", "params": {"max_depth": [1]}},
    ])
    X, y = _data()
    console, buf = _console()
    res = search(recipe, X, y, KINDS, StratifiedKFold(3, shuffle=True, random_state=0),
                 console=console)
    board = res.leaderboard
    assert [r["rank"] for r in board] == [1, 2, 3]
    assert [list(r) for r in board] == [["rank", "family", "params", "cv_mean", "cv_std",
                                         "fit_time_s"]] * 3
    means = [r["cv_mean"] for r in board]
    assert means == sorted(means, reverse=True)
    assert res.best_family == board[0]["family"] and res.best_params == board[0]["params"]
    lr = next(r for r in board if r["family"] == "logistic_regression")
    assert lr["params"] in ({"C": 0.01}, {"C": 10.0}) and lr["fit_time_s"] > 0
    assert res.scoring == "f1_macro"
    out = buf.getvalue()  # one line per candidate, also without a terminal
    for i, fam in enumerate(["naive_bayes", "logistic_regression", "decision_tree"], 1):
        assert f"[{i}/3] {fam}: f1_macro " in out
    assert "(6 fits" in out
    # the winner comes back unfitted, with its params set
    assert not hasattr(res.best_pipeline, "classes_")
    if res.best_family == "logistic_regression":
        assert res.best_pipeline.get_params()["model__C"] == res.best_params["C"]


def test_random_search_caps_n_iter_without_warning(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, search={"method": "random", "n_iter": 50},
                     candidates=[{"family": "knn", "params": {"n_neighbors": [3, 5, 7]}}])
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = search(recipe, X, y, KINDS, StratifiedKFold(3), console=_console()[0])
    assert res.leaderboard[0]["params"]["n_neighbors"] in (3, 5, 7)


def test_halving_search_and_regression_default_scoring(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, task="regression", search={"method": "halving"},
                     candidates=[{"family": "ridge", "params": {"alpha": [0.1, 1.0, 10.0]}}])
    X, _ = _data(150)
    y = pd.Series(2 * X["a"] - X["b"], name="y")
    res = search(recipe, X, y, KINDS, KFold(3, shuffle=True, random_state=0), console=_console()[0])
    assert res.scoring == "r2" and res.best_cv_mean is not None and res.best_cv_mean > 0.9


def test_linear_svm_params_reach_the_wrapped_model(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, candidates=[{"family": "linear_svm", "params": {"C": [0.5]}}])
    X, y = _data()
    res = search(recipe, X, y, KINDS, StratifiedKFold(3), console=_console()[0])
    assert res.best_params == {"C": 0.5}
    assert res.best_pipeline.named_steps["model"].estimator.C == 0.5


def test_convergence_warnings_are_collected_not_raised(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, candidates=[
        {"family": "mlp", "params": {"max_iter": [2], "early_stopping": [False]}}])
    X, y = _data()
    console, buf = _console()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = search(recipe, X, y, KINDS, StratifiedKFold(3), console=console)
    assert any("ConvergenceWarning" in m for m in res.warnings["mlp#0"])
    assert "warning(s): ConvergenceWarning" in buf.getvalue()


def test_anomaly_without_labels_keeps_first_params(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, task="anomaly", candidates=[
        {"family": "isolation_forest", "params": {"n_estimators": [20, 50], "max_samples": [64]}},
        {"family": "isolation_forest", "params": {"n_estimators": [10]}},
    ])
    X, _ = _data()
    console, buf = _console()
    res = search(recipe, X, None, KINDS, KFold(3), console=console)
    assert res.scoring is None and res.best_cv_mean is None
    assert res.best_params == {"n_estimators": 20, "max_samples": 64}
    assert [r["cv_mean"] for r in res.leaderboard] == [None, None]
    assert res.best_pipeline.get_params()["model__n_estimators"] == 20
    assert "not scored (no labels)" in buf.getvalue()


def test_anomaly_with_labels_is_scored_by_f1(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    labels = pd.Series(np.zeros(200, dtype=int))
    X.loc[:19, "a"] += 8
    labels[:20] = 1
    recipe = _recipe(tmp_path, task="anomaly", candidates=[
        {"family": "isolation_forest", "params": {"contamination": [0.1, 0.3], "n_estimators": [30]}}])
    res = search(recipe, X, labels, {"a": "numeric", "b": "numeric"},
                 StratifiedKFold(3, shuffle=True, random_state=0), console=_console()[0])
    assert res.scoring == "f1"
    assert res.best_params["contamination"] == 0.1  # 10 % flagged matches 10 % faults
    assert res.best_cv_mean is not None and res.best_cv_mean > 0.6


def test_scoring_validation(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"search\.scoring: unknown scoring 'f2_macro'"):
        resolve_scoring(_recipe(tmp_path, search={"scoring": "f2_macro"},
                                candidates=[{"family": "knn"}]))
    with pytest.raises(RecipeError, match=r"'accuracy' is not available for anomaly; use one of f1"):
        resolve_scoring(_recipe(tmp_path, task="anomaly", search={"scoring": "accuracy"},
                                candidates=[{"family": "isolation_forest"}]))
    assert resolve_scoring(_recipe(tmp_path, candidates=[{"family": "knn"}]))[0] == "f1_macro"


def test_fit_failure_names_the_candidate(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, features={"pca": {"n_components": 50}},
                     candidates=[{"family": "knn"}])
    X, y = _data()
    with pytest.raises(RecipeError, match=r"r\.yaml: candidates\[0\]: knn: fitting failed"):
        search(recipe, X, y, KINDS, StratifiedKFold(3), console=_console()[0])


# --- split ---------------------------------------------------------------------------------


def test_stratified_holdout_keeps_class_shares_and_is_seeded() -> None:
    X, y = _data(200)
    spec = SplitSpec(holdout=0.25, seed=5)
    s1 = holdout_split(X, y, spec, task="classification")
    s2 = holdout_split(X, y, spec, task="classification")
    assert len(s1.X_holdout) == 50 and len(s1.X_train) == 150
    assert s1.X_holdout.index.equals(s2.X_holdout.index)
    assert s1.y_holdout is not None and s1.y_train is not None
    share = (y == "pos").mean()
    assert abs((s1.y_holdout == "pos").mean() - share) < 0.02
    other = holdout_split(X, y, SplitSpec(holdout=0.25, seed=6), task="classification")
    assert not other.X_holdout.index.equals(s1.X_holdout.index)


def test_time_ordered_holdout_is_the_latest_rows() -> None:
    X, y = _data(100)
    order = pd.Series(np.random.default_rng(0).permutation(100))
    s = holdout_split(X, y, SplitSpec(holdout=0.2, time_column="t"), task="classification",
                      order=order)
    assert sorted(order[s.X_holdout.index]) == list(range(80, 100))
    assert list(order[s.X_train.index]) == list(range(80))  # in time order
    assert isinstance(cv_splitter(SplitSpec(time_column="t", cv=4), task="classification", y=y),
                      TimeSeriesSplit)
    with pytest.raises(DataError, match=r"split\.time_column 't' is not in the data"):
        holdout_split(X, y, SplitSpec(time_column="t"), task="classification")


def test_cv_splitters_and_errors() -> None:
    X, y = _data(60)
    assert isinstance(cv_splitter(SplitSpec(), task="classification", y=y), StratifiedKFold)
    assert isinstance(cv_splitter(SplitSpec(stratify=False), task="classification", y=y), KFold)
    assert isinstance(cv_splitter(SplitSpec(), task="regression", y=None), KFold)
    rare = pd.Series(["a"] * 58 + ["b"] * 2)
    with pytest.raises(DataError, match="rarest class has only 2 training rows"):
        cv_splitter(SplitSpec(cv=5), task="classification", y=rare)
    single = pd.Series(["a"] * 59 + ["b"])
    with pytest.raises(DataError, match=r"cannot stratify: class.* b have fewer than 2 rows"):
        holdout_split(X, single, SplitSpec(), task="classification")
    with pytest.raises(DataError, match="too few rows"):
        holdout_split(X.iloc[:3], y.iloc[:3], SplitSpec(), task="classification")
