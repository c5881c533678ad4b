"""edgeml's IsolationForest converter: one TreeEnsemble node with the scores and labels of
scikit-learn (and of skl2onnx's ~30-nodes-per-tree converter), on the machine-health recipe's
data and on random data: feature subsets, NaN, float32 values at the split thresholds.

Tolerances: labels equal; ``scores`` (decision_function) and ``score_samples`` within
SCORE_ATOL absolute (float32 arithmetic against scikit-learn's float64).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.ensemble import IsolationForest

from edgeml.catalog import FAMILIES
from edgeml.convert import check_parity, to_onnx
from edgeml.convert.converters import ensure_optional_converters
from edgeml.convert.isolation_forest import forest_attributes
from edgeml.train.data import feature_schema, load_dataset
from edgeml.train.pipeline import build_pipeline
from edgeml.train.recipe import load_recipe

SCORE_ATOL = 1e-5
RECIPE = Path(__file__).resolve().parent.parent / "models" / "machine-health.yaml"
OPSETS = {"": 17, "ai.onnx.ml": 3}


def _session(model: object) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _convert(forest: IsolationForest, n_features: int, **options: bool) -> ort.InferenceSession:
    from skl2onnx import to_onnx as skl_to_onnx

    ensure_optional_converters()
    model = skl_to_onnx(forest, np.zeros((1, n_features), dtype=np.float32), target_opset=OPSETS,
                        options={id(forest): options} if options else None)
    return _session(model)


def _check(forest: IsolationForest, X: np.ndarray) -> None:
    sess = _convert(forest, X.shape[1], score_samples=True)
    label, scores, score_samples = sess.run(None, {sess.get_inputs()[0].name: X})
    assert label.dtype == np.int64 and label.shape == scores.shape == (len(X), 1)
    np.testing.assert_array_equal(label.ravel(), forest.predict(X))
    np.testing.assert_allclose(scores.ravel(), forest.decision_function(X), atol=SCORE_ATOL, rtol=0)
    np.testing.assert_allclose(score_samples.ravel(), forest.score_samples(X), atol=SCORE_ATOL, rtol=0)


def test_machine_health_pipeline_is_one_tree_ensemble_with_parity() -> None:
    recipe = load_recipe(RECIPE)
    data = load_dataset(recipe.data, recipe.base_dir, task=recipe.task)
    X = data.frame[data.features]
    params = {k: v[-1] for k, v in recipe.candidates[0].params.items()}  # 200 trees, 0.08
    forest = FAMILIES["isolation_forest"].make("anomaly", recipe.split.seed, params)
    pipe = build_pipeline(recipe, data.kinds, forest).fit(X)
    result = to_onnx(pipe, feature_schema(X, data.kinds), task="anomaly")
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("TreeEnsembleRegressor") == 1 and len(ops) < 30, ops
    assert [(o.name, o.dtype, o.shape[1:]) for o in result.outputs] == [
        ("label", "int64", [1]), ("scores", "float32", [1])]
    report = check_parity(pipe, result.to_bytes(), X, task="anomaly", score_atol=SCORE_ATOL)
    assert report.passed and report.rows == len(X) == 2000
    assert report.max_abs_score_diff <= SCORE_ATOL and report.label_agreement == 1.0


@pytest.mark.parametrize("params", [
    {"n_estimators": 50},
    {"n_estimators": 30, "max_features": 0.5},  # each tree sees a subset of the columns
    {"n_estimators": 30, "max_features": 2, "bootstrap": True},
    {"n_estimators": 20, "max_samples": 40, "contamination": 0.1},
    {"n_estimators": 10, "max_samples": 2},  # c(2) = 1: tiny trees
], ids=["default", "max_features", "features_bootstrap", "max_samples", "two_samples"])
def test_random_data_matches_scikit_learn(params: dict[str, object]) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    X[:, 2] = np.round(X[:, 2], 1)  # repeated values
    forest = IsolationForest(random_state=0, **params).fit(X)
    unseen = np.vstack([rng.normal(size=(300, 6)) * 3, X[:100]]).astype(np.float32)
    _check(forest, unseen)
    with_nan = unseen.copy()
    with_nan[::5, 1] = np.nan  # follows missing_go_to_left, as in scikit-learn
    _check(forest, with_nan)


def test_values_on_and_next_to_every_float32_threshold() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    forest = IsolationForest(n_estimators=20, max_features=0.75, random_state=1).fit(X)
    rows = []
    for tree, features in zip(forest.estimators_, forest.estimators_features_, strict=True):
        split = tree.tree_.feature >= 0
        for f, t in zip(tree.tree_.feature[split], tree.tree_.threshold[split], strict=True):
            t32 = np.float32(t)
            for v in (np.nextafter(t32, np.float32(-np.inf)), t32, np.nextafter(t32, np.float32(np.inf))):
                row = X[len(rows) % len(X)].copy()
                row[features[f]] = v
                rows.append(row)
    edge = np.array(rows, dtype=np.float32)
    assert len(edge) > 1000
    _check(forest, edge)
    attrs = forest_attributes(forest)
    values = np.array(attrs["nodes_values"], dtype=np.float32)
    assert values.dtype == np.float32 and len(values) == sum(e.tree_.node_count for e in forest.estimators_)


def test_outputs_and_labels_match_skl2onnx_own_converter() -> None:
    from skl2onnx.operator_converters.isolation_forest import convert_sklearn_isolation_forest

    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    forest = IsolationForest(n_estimators=15, random_state=0).fit(X)
    ours = _convert(forest, 3)
    from skl2onnx import update_registered_converter
    from skl2onnx.shape_calculators.isolation_forest import calculate_isolation_forest_output_shapes

    from edgeml.convert import isolation_forest

    update_registered_converter(IsolationForest, "SklearnIsolationForest",
                                calculate_isolation_forest_output_shapes,
                                convert_sklearn_isolation_forest, overwrite=True,
                                options={"score_samples": [True, False]})
    try:
        from skl2onnx import to_onnx as skl_to_onnx

        theirs_model = skl_to_onnx(forest, X[:1], target_opset=OPSETS)
    finally:
        isolation_forest._DONE.clear()
        isolation_forest.register_isolation_forest()
    theirs = _session(theirs_model)
    assert len(theirs_model.graph.node) > 20 * 15
    for a, b in zip(ours.get_outputs(), theirs.get_outputs(), strict=True):
        assert (a.name, a.type, a.shape[1:]) == (b.name, b.type, b.shape[1:])
    got, want = (s.run(None, {s.get_inputs()[0].name: X}) for s in (ours, theirs))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=SCORE_ATOL)
