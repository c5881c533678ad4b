"""The registry of families and steps: every entry converts with its declared library,
and a recipe naming anything else fails with the file, the field and the supported names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgeml.errors import RecipeError, UnsupportedStepError
from edgeml.train.recipe import parse_recipe
from edgeml.train.steps import (
    FAMILIES,
    STEPS,
    converter_library,
    get_family,
    supported_classes,
    supported_families,
    validate_candidates,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(90, 4)).astype(np.float32)
Y_CLASS = np.array(["a", "b", "c"])[(X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)]
Y_REG = (X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * RNG.normal(size=90)).astype(np.float64)


def _recipe(tmp_path: Path, task: str, candidates: list[dict[str, Any]]) -> Any:
    raw = {"name": "t", "task": task, "data": {"source": "x.csv", "target": "y"},
           "candidates": candidates}
    return parse_recipe(raw, tmp_path / "r.yaml")


CASES = [(f.name, task) for f in FAMILIES.values() if f.available for task in f.tasks]


@pytest.mark.parametrize(("family", "task"), CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_every_family_converts_with_its_library(family: str, task: str) -> None:
    fam = FAMILIES[family]
    small: dict[str, Any] = {"n_estimators": 10} if "n_estimators" in fam.defaults.get(task, {}) else {}
    if family == "hist_gradient_boosting":
        small = {"max_iter": 20}
    est = fam.make(task, seed=0, params=small)
    if task == "classification":
        est.fit(X, Y_CLASS)
    elif task == "regression":
        est.fit(X, Y_REG)
    else:
        est.fit(X)
    assert converter_library(est) == fam.converter
    if fam.converter == "onnxmltools":  # pragma: no cover - only with xgboost/lightgbm installed
        pytest.skip("onnxmltools families are converted by edgeml.convert")
    from skl2onnx import to_onnx

    options = {id(est): {"zipmap": False}} if task == "classification" else None
    onx = to_onnx(est, X[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: X})
    if task == "classification":
        np.testing.assert_allclose(out[1], est.predict_proba(X), atol=1e-4)
        if family != "sgd":  # SGD's OvR predict is argmax of decision, not of normalized proba
            assert (out[0] == est.predict(X)).all()
    elif task == "regression":
        np.testing.assert_allclose(out[0].ravel(), est.predict(X), rtol=1e-3, atol=1e-3)
    else:
        assert (out[0].ravel() == est.predict(X)).all()


def test_classifiers_all_have_predict_proba() -> None:
    for name in supported_families("classification"):
        est = FAMILIES[name].make("classification", seed=0).fit(X, Y_CLASS)
        assert est.predict_proba(X[:3]).shape == (3, 3), name


def test_linear_svm_classifier_is_calibrated_and_params_reach_the_inner_model() -> None:
    fam = FAMILIES["linear_svm"]
    est = fam.make("classification", seed=3, params={"C": 0.5})
    assert type(est).__name__ == "CalibratedClassifierCV"
    assert est.estimator.C == 0.5 and est.estimator.random_state == 3
    assert fam.param_prefix("classification") == "model__estimator__"
    assert fam.param_prefix("regression") == "model__"


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
            continue  # edgeml.convert registers its converter (checked below)
        assert aliases.get(cls_name, cls_name) in supported, cls_name


def test_unknown_family_names_file_field_and_supported(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "classification", [
        {"family": "random_forest"}, {"family": "knn"}, {"family": "deep_forest"},
    ])
    with pytest.raises(RecipeError) as exc:
        validate_candidates(recipe)
    msg = str(exc.value)
    assert str(tmp_path / "r.yaml") in msg
    assert "candidates[2].family" in msg
    assert "'deep_forest'" in msg
    for name in ("logistic_regression", "random_forest", "mlp", "naive_bayes"):
        assert name in msg
    assert "isolation_forest" not in msg  # only the families of this task


def test_family_for_wrong_task(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "regression", [{"family": "naive_bayes"}])
    with pytest.raises(RecipeError, match=r"candidates\[0\]\.family: family 'naive_bayes' does "
                                          r"not support task regression"):
        validate_candidates(recipe)


def test_missing_optional_dependency_is_explained() -> None:
    if FAMILIES["xgboost"].available:  # pragma: no cover
        pytest.skip("xgboost is installed here")
    with pytest.raises(RecipeError, match=r"needs the 'xgboost' package"):
        get_family("xgboost", "regression")
    assert "xgboost" not in supported_families()


def test_unknown_hyperparameter_lists_valid_ones(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "classification", [
        {"family": "random_forest", "params": {"n_trees": [10]}},
    ])
    with pytest.raises(RecipeError) as exc:
        validate_candidates(recipe)
    msg = str(exc.value)
    assert "candidates[0].params.n_trees: unknown parameter for random_forest" in msg
    assert "n_estimators" in msg and "max_depth" in msg


def test_invalid_value_is_reported_by_field(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "classification", [
        {"family": "logistic_regression"},
        {"family": "random_forest", "params": {"n_estimators": [10, -1]}},
    ])
    with pytest.raises(RecipeError, match=r"candidates\[1\]\.params\.n_estimators: invalid value -1"):
        validate_candidates(recipe)


def test_fixed_and_restricted_params(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "classification", [{"family": "svm", "params": {"probability": [False]}}])
    with pytest.raises(RecipeError, match=r"svm fixes probability=True"):
        validate_candidates(recipe)
    recipe = _recipe(tmp_path, "classification", [{"family": "sgd", "params": {"loss": ["hinge"]}}])
    with pytest.raises(RecipeError, match=r"'hinge' not allowed for sgd; use one of log_loss"):
        validate_candidates(recipe)
    # regression SGD may use its own losses
    validate_candidates(_recipe(tmp_path, "regression", [
        {"family": "sgd", "params": {"loss": ["huber"]}}]))


def test_valid_candidates_pass(tmp_path: Path) -> None:
    validate_candidates(_recipe(tmp_path, "classification", [
        {"family": "mlp", "params": {"hidden_layer_sizes": [[16], [8, 8]], "alpha": [0.1]}},
        {"family": "svm", "params": {"kernel": ["rbf", "linear"], "C": [1.0]}},
    ]))


def test_converter_library_refuses_unknown_steps() -> None:
    from sklearn.preprocessing import QuantileTransformer

    with pytest.raises(UnsupportedStepError) as exc:
        converter_library(QuantileTransformer())
    assert "QuantileTransformer" in str(exc.value)
    assert "OneHotEncoder" in str(exc.value) and "RandomForestClassifier" in str(exc.value)
    from sklearn.impute import SimpleImputer

    assert converter_library(SimpleImputer) == "skl2onnx"


def test_registry_agrees_with_edgeml_convert() -> None:
    from edgeml.convert.converters import REGISTRY, ensure_optional_converters

    ensure_optional_converters()
    for cls, library in supported_classes().items():
        entry = REGISTRY.get(cls)
        assert entry is not None, f"edgeml.convert has no converter for {cls.__name__}"
        assert entry.library == library, cls.__name__
