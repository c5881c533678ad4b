"""The training column of the catalog: a recipe naming anything the catalog does not list,
or a value it cannot convert, is refused when it is loaded, naming the file, the field and
what is supported. (Conversion of every family x task: tests/test_catalog.py.)"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeml.errors import RecipeError, UnsupportedStepError
from edgeml.train.recipe import load_recipe, parse_recipe
from edgeml.train.steps import (
    FAMILIES,
    STEPS,
    converter_library,
    get_family,
    supported_classes,
    supported_families,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(90, 4)).astype(np.float32)
Y_CLASS = np.array(["a", "b", "c"])[(X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)]


def _recipe(tmp_path: Path, task: str, candidates: list[dict[str, Any]]) -> Any:
    raw = {"name": "t", "task": task, "data": {"source": "x.csv", "target": "y"},
           "candidates": candidates}
    return parse_recipe(raw, tmp_path / "r.yaml")


def test_sgd_modified_huber_recipe_loads_and_hinge_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "sgd.yaml"
    path.write_text(
        "name: sgd\ntask: classification\ndata: {source: x.csv, target: y}\n"
        "candidates:\n  - family: sgd\n    params: {loss: [log_loss, modified_huber]}\n"
    )
    recipe = load_recipe(path)  # edgeml's SGDClassifier converter labels modified_huber
    assert recipe.candidates[0].params["loss"] == ["log_loss", "modified_huber"]
    path.write_text(path.read_text().replace("modified_huber", "hinge"))
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert str(exc.value) == (
        f"{path}: candidates[0].params.loss: 'hinge' cannot be converted to ONNX by skl2onnx for "
        "SGDClassifier: only these losses have predict_proba, which the bundle's probabilities "
        "output needs; use 'log_loss' or 'modified_huber'"
    )


def test_classifiers_all_have_predict_proba() -> None:
    for name in supported_families("classification"):
        est = FAMILIES[name].make("classification", seed=0)
        assert est.fit(X, Y_CLASS).predict_proba(X[:3]).shape == (3, 3), name


def test_svm_and_linear_svm_classifiers_are_calibrated_and_params_reach_the_inner_model() -> None:
    for name, inner in (("linear_svm", "LinearSVC"), ("svm", "SVC")):
        fam = FAMILIES[name]
        est = fam.make("classification", seed=3, params={"C": 0.5})
        assert type(est).__name__ == "CalibratedClassifierCV"
        assert type(est.estimator).__name__ == inner
        assert est.estimator.C == 0.5 and est.estimator.random_state == 3
        assert fam.param_prefix("classification") == "model__estimator__"
        assert fam.param_prefix("regression") == "model__"
    assert FAMILIES["svm"].make("classification", seed=0).ensemble is False
    with warnings.catch_warnings():  # SVC(probability=True) warns (FutureWarning) in 1.9
        warnings.simplefilter("error")
        FAMILIES["svm"].make("classification", seed=0).fit(X, Y_CLASS)
    assert FAMILIES["svm"].make("classification", seed=0).estimator.probability in (False, "deprecated")


def test_seed_goes_to_random_state_unless_params_set_it() -> None:
    fam = FAMILIES["random_forest"]
    assert fam.make("classification", seed=7).random_state == 7
    assert fam.make("classification", seed=7, params={"random_state": 1}).random_state == 1
    assert FAMILIES["mlp"].make("classification", seed=7).early_stopping is True


def test_every_step_class_is_known_to_its_converter() -> None:
    import skl2onnx

    supported = set(skl2onnx.supported_converters(from_sklearn=True))
    aliases = {"StandardScaler": "Scaler", "Pipeline": "Pipeline"}
    for step in STEPS.values():
        cls_name = step.cls.partition(":")[2]
        if step.converter == "edgeml":
            continue  # edgeml.convert registers its converter (tests/test_convert.py)
        assert aliases.get(cls_name, cls_name) in supported, cls_name


def test_unknown_family_names_file_field_and_supported(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as exc:
        _recipe(tmp_path, "classification", [
            {"family": "random_forest"}, {"family": "knn"}, {"family": "deep_forest"},
        ])
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'r.yaml'}: candidates[2].family: unknown family "
                          f"'deep_forest'; supported for classification: ")
    for name in ("logistic_regression", "random_forest", "mlp", "naive_bayes", "svm"):
        assert name in msg
    assert "isolation_forest" not in msg  # only the families of this task


def test_family_for_wrong_task(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"candidates\[0\]\.family: family 'naive_bayes' does "
                                          r"not support task regression"):
        _recipe(tmp_path, "regression", [{"family": "naive_bayes"}])


def test_missing_optional_dependency_is_explained() -> None:
    if FAMILIES["xgboost"].available:  # pragma: no cover
        pytest.skip("xgboost is installed here")
    with pytest.raises(RecipeError, match=r"needs the 'xgboost' package \(pip install xgboost"):
        get_family("xgboost", "regression")
    assert "xgboost" not in supported_families()


def test_unknown_hyperparameter_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as exc:
        _recipe(tmp_path, "classification", [
            {"family": "random_forest", "params": {"n_trees": [10]}},
        ])
    msg = str(exc.value)
    assert "candidates[0].params.n_trees: unknown parameter for random_forest" in msg
    assert "n_estimators" in msg and "max_depth" in msg


def test_invalid_value_is_reported_by_field(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"candidates\[1\]\.params\.n_estimators: invalid value -1"):
        _recipe(tmp_path, "classification", [
            {"family": "logistic_regression"},
            {"family": "random_forest", "params": {"n_estimators": [10, -1]}},
        ])


def test_fixed_and_unconvertible_params(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"params\.probability: svm fixes probability: svm "
                                          r"classifiers get probabilities from CalibratedClassifierCV"):
        _recipe(tmp_path, "classification", [{"family": "svm", "params": {"probability": [False]}}])
    with pytest.raises(RecipeError, match=r"params\.metric: 'chebyshev' cannot be converted to ONNX "
                                          r"by skl2onnx for KNeighborsRegressor: .*; use 'minkowski'"):
        _recipe(tmp_path, "regression", [{"family": "knn", "params": {"metric": ["chebyshev"]}}])
    with pytest.raises(RecipeError, match=r"'poisson' cannot be converted .* inverse link"):
        _recipe(tmp_path, "regression", [
            {"family": "hist_gradient_boosting", "params": {"loss": ["squared_error", "poisson"]}}])
    # the rule is per task: regression SGD may use its own losses
    _recipe(tmp_path, "regression", [{"family": "sgd", "params": {"loss": ["huber"]}}])


def test_valid_candidates_pass(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "classification", [
        {"family": "mlp", "params": {"hidden_layer_sizes": [[16], [8, 8]], "alpha": [0.1]}},
        {"family": "svm", "params": {"kernel": ["rbf", "linear"], "C": [1.0]}},
    ])
    assert [c.family for c in recipe.candidates] == ["mlp", "svm"]


def test_converter_library_refuses_unknown_steps() -> None:
    from sklearn.preprocessing import QuantileTransformer

    with pytest.raises(UnsupportedStepError) as exc:
        converter_library(QuantileTransformer())
    assert "QuantileTransformer" in str(exc.value)
    assert "OneHotEncoder" in str(exc.value) and "RandomForestClassifier" in str(exc.value)
    from sklearn.impute import SimpleImputer

    assert converter_library(SimpleImputer) == "skl2onnx"


def test_registry_agrees_with_edgeml_convert() -> None:
    from edgeml.convert.converters import REGISTRY

    table = supported_classes()
    for cls, library in table.items():
        entry = REGISTRY.get(cls)
        assert entry is not None, f"edgeml.convert has no converter for {cls.__name__}"
        assert entry.library == library, cls.__name__
    assert {e.cls for e in REGISTRY.entries()} >= set(table)
