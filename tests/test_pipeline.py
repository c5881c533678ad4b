"""The unfitted pipeline follows the "Fitted pipeline shape" contract and fits raw feature frames."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import check_transformer_general

from edgeml.errors import DataError, RecipeError
from edgeml.train.pipeline import build_pipeline, text_token_pattern, validate_features
from edgeml.train.recipe import TextSpec, parse_recipe
from edgeml.train.steps import FAMILIES, converter_library
from edgeml.train.transformers import OutlierClipper

KINDS = {"size": "numeric", "colour": "categorical", "note": "text", "weight": "numeric"}


def _recipe(tmp_path: Path, **extra: Any) -> Any:
    raw = {"name": "t", "task": "classification", "data": {"source": "x.csv", "target": "y"},
           "candidates": [{"family": "logistic_regression"}], **extra}
    return parse_recipe(raw, tmp_path / "r.yaml")


def _frame(n: int = 60) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(1)
    size = rng.normal(10, 2, n)
    size[::7] = np.nan
    colour = np.array(["red", "green", "blue"], dtype=object)[rng.integers(0, 3, n)]
    colour[::5] = ""
    words = np.array(["fast engine", "slow pump", "loud noise!", "quiet, smooth 42"], dtype=object)
    X = pd.DataFrame({"size": size, "colour": colour, "note": words[rng.integers(0, 4, n)],
                      "weight": rng.normal(0, 1, n)})
    X["colour"] = X["colour"].astype(object)
    X["note"] = X["note"].astype(object)
    y = pd.Series(np.where(np.nan_to_num(size, nan=10) > 10, "big", "small"), dtype=object)
    return X, y


def test_shape_matches_the_contract(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, preprocess={"numeric": {"clip_outliers": 3}})
    pipe = build_pipeline(recipe, KINDS, FAMILIES["logistic_regression"].make("classification", 0))
    assert [name for name, _ in pipe.steps] == ["preprocess", "model"]
    ct = pipe.named_steps["preprocess"]
    assert ct.sparse_threshold == 0
    names = [(n, cols) for n, _, cols in ct.transformers]
    assert names == [("numeric", ["size", "weight"]), ("categorical", ["colour"]),
                     ("text:note", "note")]  # a text column is given as a string (1-D)
    numeric = dict(ct.transformers[0][1].steps)
    assert [type(s).__name__ for s in numeric.values()] == [
        "SimpleImputer", "OutlierClipper", "StandardScaler"]
    imputer, encoder = (s for _, s in ct.transformers[1][1].steps)
    assert imputer.missing_values == "" and encoder.handle_unknown == "ignore"
    for step in [ct, *numeric.values(), imputer, encoder, ct.transformers[2][1], pipe[-1]]:
        assert converter_library(step) == ("edgeml" if step is numeric["clip"] else "skl2onnx")


def test_options_map_to_steps(tmp_path: Path) -> None:
    recipe = _recipe(
        tmp_path,
        preprocess={"numeric": {"impute": "constant", "fill_value": -1, "scale": "none"},
                    "categorical": {"impute": "constant", "fill_value": "?", "encode": "ordinal"},
                    "text": {"ngram_range": [1, 2], "max_features": 50, "lowercase": False}},
        features={"polynomial": {"degree": 2}, "select": {"method": "kbest_anova", "k": 5},
                  "pca": {"n_components": 3}},
    )
    pipe = build_pipeline(recipe, KINDS, FAMILIES["knn"].make("classification", 0))
    assert [name for name, _ in pipe.steps] == ["preprocess", "features", "model"]
    ct = pipe.named_steps["preprocess"]
    num = ct.transformers[0][1]
    assert num.named_steps["impute"].fill_value == -1 and num.named_steps["scale"] == "passthrough"
    cat = ct.transformers[1][1]
    assert cat.named_steps["impute"].fill_value == "?"
    enc = cat.named_steps["encode"]
    assert type(enc).__name__ == "OrdinalEncoder" and enc.unknown_value == -1
    vec = ct.transformers[2][1]
    assert vec.ngram_range == (1, 2) and vec.max_features == 50 and vec.lowercase is False
    feats = pipe.named_steps["features"]
    assert [n for n, _ in feats.steps] == ["polynomial", "select", "pca"]
    for _, step in feats.steps:
        assert converter_library(step) == "skl2onnx"
    numeric_only = build_pipeline(recipe, {"size": "numeric", "weight": "numeric"}, clone(pipe[-1]))
    X, y = _frame()
    numeric_only.fit(X[["size", "weight"]], y)
    assert numeric_only.named_steps["features"][-1].n_components_ == 3
    assert set(numeric_only.predict(X[["size", "weight"]])) <= {"big", "small"}


@pytest.mark.parametrize("method", ["variance", "kbest_anova", "kbest_mutual_info", "model"])
def test_feature_selection_methods_fit(tmp_path: Path, method: str) -> None:
    select: dict[str, Any] = {"method": method}
    if method.startswith("kbest"):
        select["k"] = 3
    recipe = _recipe(tmp_path, features={"select": select})
    pipe = build_pipeline(recipe, KINDS, FAMILIES["naive_bayes"].make("classification", 0))
    X, y = _frame()
    pipe.fit(X, y)
    assert set(pipe.predict(X)) <= {"big", "small"}


def test_sublinear_tf_is_refused(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, preprocess={"text": {"sublinear_tf": True}})
    with pytest.raises(RecipeError, match=r"preprocess\.text\.sublinear_tf: true does not convert"):
        validate_features(recipe)


@pytest.mark.parametrize(("task", "family"), [("classification", "random_forest"),
                                              ("regression", "ridge"),
                                              ("anomaly", "isolation_forest")])
def test_built_pipeline_converts_with_parity(tmp_path: Path, task: str, family: str) -> None:
    from edgeml.convert import check_parity, to_onnx
    from edgeml.train.data import feature_schema

    raw = {"name": "t", "task": task, "data": {"source": "x.csv", "target": "y"},
           "preprocess": {"numeric": {"clip_outliers": 2.5}, "text": {"strip_punctuation": False}},
           "features": {"select": {"method": "variance"}},
           "candidates": [{"family": family}]}
    recipe = parse_recipe(raw, tmp_path / "r.yaml")
    small = {"n_estimators": 10} if "forest" in family else {}
    pipe = build_pipeline(recipe, KINDS, FAMILIES[family].make(task, 0, small))
    X, y = _frame(80)
    target: Any = {"classification": y, "regression": X["weight"] * 2, "anomaly": None}[task]
    pipe.fit(X, target)
    classes = [str(c) for c in pipe.classes_] if task == "classification" else None
    result = to_onnx(pipe, feature_schema(X, KINDS), task=task, classes=classes)
    report = check_parity(pipe, result.model.SerializeToString(), X, task=task, classes=classes)
    assert report.passed


def test_kbest_needs_k(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, features={"select": {"method": "kbest_anova"}})
    with pytest.raises(RecipeError, match=r"r\.yaml: features\.select\.k: method kbest_anova needs k"):
        validate_features(recipe)


def test_fits_raw_frame_with_missing_and_unseen_values(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    pipe = build_pipeline(recipe, KINDS, FAMILIES["random_forest"].make("classification", 0))
    X, y = _frame()
    pipe.fit(X, y)
    new = pd.DataFrame({"size": [np.nan], "colour": ["purple"], "note": [""], "weight": [0.0]})
    new = new.astype({"colour": object, "note": object})
    assert pipe.predict_proba(new).shape == (1, 2)


def test_no_features_or_bad_kind_is_a_data_error(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    est = FAMILIES["knn"].make("classification", 0)
    with pytest.raises(DataError, match="no feature columns"):
        build_pipeline(recipe, {}, est)
    with pytest.raises(DataError, match="unknown column kinds"):
        build_pipeline(recipe, {"a": "date"}, est)


@pytest.mark.parametrize(
    ("spec", "text", "tokens"),
    [
        (TextSpec(), "Hello, world! 42 x abc123", ["hello", "world", "abc"]),
        (TextSpec(strip_digits=False), "Hello, world! 42 x abc123", ["hello", "world", "42", "abc123"]),
        (TextSpec(strip_punctuation=False), "Hi, you!", ["hi", ",", "you", "!"]),
        (TextSpec(), "café naïve", ["caf", "na", "ve"]),  # ASCII classes: non-ASCII splits
    ],
)
def test_token_pattern_realises_cleaning(spec: TextSpec, text: str, tokens: list[str]) -> None:
    assert re.findall(text_token_pattern(spec), text.lower()) == tokens


def test_outlier_clipper_learns_bounds_and_clips() -> None:
    X = np.array([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0], [np.nan, 5.0]])
    clip = OutlierClipper(k=1.0)
    assert clip.fit(X) is clip
    assert clip.lower_.dtype == np.float64 and clip.upper_.dtype == np.float64
    std = np.std([0.0, 2.0, 4.0])
    np.testing.assert_allclose(clip.lower_, [2.0 - std, 5.0])
    np.testing.assert_allclose(clip.upper_, [2.0 + std, 5.0])
    out = clip.transform(np.array([[100.0, 5.0], [-100.0, 6.0], [np.nan, 4.0], [2.5, 5.0]]))
    np.testing.assert_allclose(out, [[2.0 + std, 5.0], [2.0 - std, 5.0], [np.nan, 5.0], [2.5, 5.0]])
    assert list(clip.get_feature_names_out(["a", "b"])) == ["a", "b"]


def test_outlier_clipper_follows_sklearn_conventions() -> None:
    clip = OutlierClipper(k=2.5)
    assert clip.get_params() == {"k": 2.5}
    assert clone(clip).k == 2.5
    with pytest.raises(ValueError, match="k must be a positive number"):
        OutlierClipper(k=0).fit(np.ones((3, 1)))
    check_transformer_general("OutlierClipper", OutlierClipper())
    fitted = OutlierClipper().fit(pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]}))
    assert list(fitted.feature_names_in_) == ["a", "b"] and fitted.n_features_in_ == 2
