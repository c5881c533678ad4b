"""Dynamic int8 quantization: MLPs shrink, trees are left alone, a quality drop is refused."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, mean_absolute_error
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from edgeml.convert import (
    compare,
    decide,
    opsets_of,
    quantize_dynamic_int8,
    quantize_for_target,
    runtime_limits,
    to_onnx,
)
from edgeml.errors import ConversionError, PackagingError

COLUMNS = [f"px{i}" for i in range(64)]
FEATURES = [{"name": c, "kind": "numeric"} for c in COLUMNS]


def _data() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    digits = load_digits()
    X = pd.DataFrame(digits.data.astype(float), columns=COLUMNS)
    return train_test_split(X, digits.target.astype(str), test_size=0.3, random_state=0)


X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = _data()


def build(model) -> Pipeline:
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    return Pipeline([("preprocess", ColumnTransformer([("numeric", numeric, COLUMNS)], sparse_threshold=0)),
                     ("model", model)])


def onnx_bytes(model) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = build(model).fit(X_TRAIN, Y_TRAIN)
    return to_onnx(pipe, FEATURES, task="classification", runtime="1.16").to_bytes()


@pytest.fixture(scope="module")
def mlp() -> bytes:
    return onnx_bytes(MLPClassifier(hidden_layer_sizes=(64,), max_iter=80, random_state=0))


def test_mlp_quantizes_smaller_with_a_small_metric_drop(mlp: bytes) -> None:
    decision = decide(mlp, "auto")
    assert decision.quantize and decision.matmul_share > 0.9
    quantized = quantize_dynamic_int8(mlp)
    ops = {n.op_type for n in onnx.load_model_from_string(quantized).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "MatMul" not in ops

    report = compare(mlp, quantized, X_TEST, Y_TEST, task="classification", metric=accuracy_score,
                     metric_name="accuracy", runs=20)
    assert report.size_after < 0.6 * report.size_before
    assert report.metric_before > 0.9 and abs(report.drop_points) <= 1.0
    assert report.drop_points == pytest.approx((report.metric_before - report.metric_after) * 100)
    assert report.latency_ms_before > 0 and report.latency_ms_after > 0 and report.runs == 20
    report.check(max_drop_points=1.0)
    assert set(report.to_dict()) >= {"size_before", "size_after", "size_ratio", "drop_points",
                                     "latency_ms_before", "latency_ms_after"}

    shipped, decision, report = quantize_for_target(
        mlp, X_TEST, Y_TEST, task="classification", metric=accuracy_score, runs=5,
        runtime=runtime_limits("1.16"),
    )
    assert report is not None and len(shipped) == report.size_after < len(mlp)
    assert opsets_of(shipped)[""] <= 19


def test_a_too_strict_tolerance_refuses(mlp: bytes) -> None:
    quantized = quantize_dynamic_int8(mlp)
    report = compare(mlp, quantized, X_TEST, Y_TEST, task="classification", metric=accuracy_score,
                     metric_name="accuracy", runs=3)
    report.check(max_drop_points=report.drop_points)  # exactly at the limit is allowed
    with pytest.raises(PackagingError, match=r"quantized model refused: holdout accuracy dropped .* allowed"):
        report.check(max_drop_points=report.drop_points - 0.01)
    with pytest.raises(PackagingError, match="quantized model refused"):
        quantize_for_target(mlp, X_TEST, Y_TEST, task="classification", metric=accuracy_score,
                            metric_name="accuracy", max_drop_points=-50.0, runs=3)


def test_lower_is_better_metrics_flip_the_sign(mlp: bytes) -> None:
    y_num = Y_TEST.astype(float)

    def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(mean_absolute_error(y_true.astype(float), y_pred.astype(float)))

    report = compare(mlp, quantize_dynamic_int8(mlp), X_TEST, y_num, task="classification",
                     metric=mae, metric_name="mae", greater_is_better=False, runs=2)
    assert report.drop_points == pytest.approx((report.metric_after - report.metric_before) * 100)


def test_auto_never_quantizes_a_random_forest() -> None:
    forest = onnx_bytes(RandomForestClassifier(n_estimators=5, max_depth=6, random_state=0))
    decision = decide(forest, "auto")
    assert not decision.quantize and "tree ensembles" in decision.reason
    shipped, decision, report = quantize_for_target(forest, X_TEST, Y_TEST, task="classification",
                                                    metric=accuracy_score)
    assert shipped == forest and report is None


def test_auto_skips_a_linear_model_without_matmul() -> None:
    linear = onnx_bytes(LogisticRegression(max_iter=300))
    decision = decide(linear, "auto")
    assert not decision.quantize and decision.reason == "no MatMul/Gemm weights to quantize"
    assert decide(linear, "always").quantize and not decide(linear, "never").quantize
    with pytest.raises(ConversionError, match="policy 'sometimes' is not one of auto, always, never"):
        decide(linear, "sometimes")
