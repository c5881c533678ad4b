"""Generated from edgeml.catalog: every family x task it lists (and every convertible value
of each ParamRule) is fitted on a tiny dataset inside edgeml's own pipeline, converted with
edgeml's options and compared with scikit-learn through onnxruntime; every value a rule
refuses is shown to fail. The catalog registry refuses silent overwrites.

Tolerances (explicit, as in sklearn-onnx's per-estimator tests): probabilities within
PROB_ATOL, labels equal (a float32 tie at a split threshold is accepted by the parity gate
and counted), regression within REL_TOL relative, anomaly scores within SCORE_ATOL.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.exceptions import ConvergenceWarning

from edgeml.catalog import CATALOG, Catalog, Family, ParamRule, Step
from edgeml.convert import check_parity, frame_to_feeds, to_onnx
from edgeml.errors import ConversionError, UnsupportedStepError
from edgeml.train.pipeline import build_pipeline
from edgeml.train.recipe import parse_recipe

PROB_ATOL = 1e-4
REL_TOL = 1e-4
SCORE_ATOL = 1e-4
KINDS = {"temp": "numeric", "load": "numeric", "rpm": "numeric", "colour": "categorical"}
FEATURES = [{"name": n, "kind": k} for n, k in KINDS.items()]


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({
        "temp": rng.normal(20, 5, n),
        "load": rng.normal(0, 100, n),
        "rpm": np.round(rng.uniform(0, 3000, n), -2),  # quantized: repeated values
        "colour": pd.Series(rng.choice(["red", "green", "blue", ""], n), dtype=object),
    })
    X.loc[rng.random(n) < 0.1, "temp"] = np.nan
    return X


TRAIN, TEST = _frame(150, 0), _frame(80, 1)
TEST.loc[TEST.index[0], "colour"] = "purple"  # unseen category


def _target(X: pd.DataFrame, task: str) -> Any:
    s = X["temp"].fillna(20) / 5 + X["load"] / 50 + (X["colour"] == "red") * 2 + X["rpm"] / 1000
    if task == "regression":
        return (s * 10 + 300).to_numpy()  # > 0 for the poisson and gamma losses
    if task == "anomaly":
        return None
    q = np.quantile(s, [0.33, 0.66])
    return np.where(s < q[0], "low", np.where(s < q[1], "mid", "high"))


def _fit(fam: Family, task: str, params: dict[str, Any], tmp_path: Path) -> Any:
    raw = {"name": "t", "task": task, "data": {"source": "x.csv", "target": "y"},
           "candidates": [{"family": fam.name}]}
    recipe = parse_recipe(raw, tmp_path / "r.yaml")
    pipe = build_pipeline(recipe, KINDS, fam.make(task, 0, {**fam.quick, **params}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tiny data, few iterations
        return pipe.fit(TRAIN, _target(TRAIN, task))


def _skip_unless_installed(fam: Family) -> list[Any]:
    if fam.requires is None:
        return []
    missing = [m for m in (fam.requires, "onnxmltools") if importlib.util.find_spec(m) is None]
    return [pytest.mark.skipif(bool(missing), reason=f"{fam.name}: optional package(s) not "
                                                     f"installed: {', '.join(missing)}")]


def _cases() -> list[Any]:
    out = []
    for fam, task in CATALOG.cases():
        marks = _skip_unless_installed(fam)
        out.append(pytest.param(fam.name, task, {}, marks=marks, id=f"{fam.name}-{task}"))
        for rule in fam.rules_for(task).values():
            default = fam.defaults.get(task, {}).get(rule.param)
            for value in rule.allowed:
                if value != default:
                    out.append(pytest.param(fam.name, task, {rule.param: value}, marks=marks,
                                            id=f"{fam.name}-{task}-{rule.param}={value}"))
    return out


def _refusals() -> list[Any]:
    return [
        pytest.param(fam.name, task, rule.param, value, marks=_skip_unless_installed(fam),
                     id=f"{fam.name}-{task}-{rule.param}={value}")
        for fam, task in CATALOG.cases()
        for rule in fam.rules_for(task).values()
        for value in rule.refused
    ]


@pytest.mark.parametrize(("family", "task", "params"), _cases())
def test_catalog_entry_converts_with_parity(family: str, task: str, params: dict[str, Any],
                                            tmp_path: Path) -> None:
    fam = CATALOG.family(family)
    pipe = _fit(fam, task, params, tmp_path)
    classes = [str(c) for c in pipe.classes_] if task == "classification" else None
    result = to_onnx(pipe, FEATURES, task=task, classes=classes)
    report = check_parity(pipe, result.to_bytes(), TEST, task=task, classes=classes,
                          prob_atol=PROB_ATOL, rel_tol=REL_TOL, score_atol=SCORE_ATOL,
                          dump_dir=tmp_path / "parity")  # rows.csv + model.onnx on failure
    assert report.passed and report.rows == len(TEST)
    assert report.float32_ties <= 2, report  # rounding at a split threshold, not a pattern

    # what a device sees, compared directly (the parity gate's verdict is not taken on trust)
    sess = ort.InferenceSession(result.to_bytes(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, frame_to_feeds(TEST, [(i.name, i.type) for i in sess.get_inputs()])),
                   strict=True))
    same = report.rows - report.float32_ties - report.tied_rows
    if task == "classification":
        assert list(out) == ["label", "probabilities"]
        assert (np.ravel(out["label"]).astype(str) == pipe.predict(TEST).astype(str)).sum() >= same
        assert report.max_abs_prob_diff <= PROB_ATOL
    elif task == "regression":
        assert list(out) == ["prediction"]
        assert report.max_rel_error <= REL_TOL
    else:
        assert list(out) == ["label", "scores"]
        assert (np.ravel(out["label"]) == pipe.predict(TEST)).sum() >= same
        assert report.max_abs_score_diff <= SCORE_ATOL
    inner = pipe[-1].estimator if task in fam.calibrated else pipe[-1]
    assert type(inner) is fam.estimator_class(task)


@pytest.mark.parametrize(("family", "task", "param", "value"), _refusals())
def test_refused_value_really_does_not_convert(family: str, task: str, param: str, value: Any,
                                               tmp_path: Path) -> None:
    """The catalog refuses only what fails: conversion errors or parity breaks."""
    fam = CATALOG.family(family)
    pipe = _fit(fam, task, {param: value}, tmp_path)
    classes = [str(c) for c in pipe.classes_] if task == "classification" else None
    try:
        result = to_onnx(pipe, FEATURES, task=task, classes=classes)
    except ConversionError:
        return
    report = check_parity(pipe, result.to_bytes(), TEST, task=task, classes=classes,
                          raise_on_failure=False)
    assert not report.passed, f"{family} {param}={value!r} converts with parity: allow it"


def test_every_listed_class_has_a_converter_entry() -> None:
    from edgeml.convert.converters import REGISTRY

    for item in CATALOG.convertible():
        entry = REGISTRY.get(item.cls)
        assert entry is not None, item.cls.__name__
        assert (entry.kind, entry.library) == (item.kind, item.library)
        assert dict(entry.options) == dict(item.options)
    assert REGISTRY.get(CATALOG.family("sgd").estimator_class("classification")).options == {
        "zipmap": False}


def test_registration_refuses_silent_overwrite_and_unknown_names_list_the_supported() -> None:
    with pytest.raises(ValueError, match="a family named 'ridge' is already in the catalog"):
        CATALOG.add_family(Family("ridge", {"regression": "sklearn.linear_model:Ridge"}))
    with pytest.raises(ValueError, match="a step named 'pca' is already"):
        CATALOG.add_step(Step("pca", "sklearn.decomposition:PCA"))
    fresh = Catalog()
    fresh.add_family(Family("ridge", {"regression": "sklearn.linear_model:Ridge"}))
    fresh.add_family(Family("ridge", {"regression": "sklearn.linear_model:Ridge"}, note="new"),
                     replace=True)
    assert fresh.family("ridge").note == "new" and fresh.supported() == ["ridge"]
    with pytest.raises(ValueError, match="task 'forecast' is not one of"):
        fresh.add_family(Family("arima", {"forecast": "statsmodels:ARIMA"}))
    with pytest.raises(UnsupportedStepError) as exc:
        CATALOG.family("deep_forest")
    assert "unknown model family 'deep_forest'; supported: logistic_regression" in str(exc.value)
    assert "isolation_forest" in str(exc.value)


def test_defaults_and_quick_params_convert() -> None:
    for fam, task in CATALOG.cases():
        for param, rule in fam.rules_for(task).items():
            for params in (fam.defaults.get(task, {}), fam.quick):
                if param in params:
                    assert params[param] in rule.allowed, (fam.name, task, param)
            assert not set(rule.refused) & set(rule.allowed), (fam.name, param)


def test_rule_message_names_library_estimator_reason_and_the_values_to_use() -> None:
    rule = ParamRule("loss", ("log_loss", "hinge"), "why", ("classification",))
    assert rule.problem("hinge", "SGDClassifier", "skl2onnx") is None
    assert rule.problem("modified_huber", "SGDClassifier", "skl2onnx") == (
        "'modified_huber' cannot be converted to ONNX by skl2onnx for SGDClassifier: why; "
        "use 'log_loss' or 'hinge'")
