"""Dynamic int8 quantization: MLPs shrink, trees are left alone, a quality drop is refused.

The mechanics are edgeml.convert.quantize; the policy (auto | int8 | none) is the packaging
quantize stage, edgeml.package.quality.apply_policy.
"""

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

from edgeml.convert import compare, decide, opsets_of, quantize_dynamic_int8, to_onnx
from edgeml.convert.quantize import QUANTIZER_MIN_OPSET
from edgeml.errors import PackagingError, UsageError
from edgeml.package.policy import POLICIES
from edgeml.package.profiles import QuantizationPolicy
from edgeml.package.quality import QuantizationOutcome, apply_policy

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


META = {"task": "classification", "model": {"scoring": "accuracy"}}


def policy(model: bytes, name: str, *, max_metric_drop: float = 1.0, max_opset: int = 21) -> QuantizationOutcome:
    """The packaging quantize stage on the digits holdout, for a target running ``max_opset``."""
    return apply_policy(model, X_TEST, Y_TEST, META, policy=name, max_metric_drop=max_metric_drop,
                        max_opset=max_opset, target="board (onnxruntime 1.16.0)",
                        float_labels=lambda: Y_TEST)


@pytest.fixture(scope="module")
def mlp() -> bytes:
    return onnx_bytes(MLPClassifier(hidden_layer_sizes=(64,), max_iter=80, random_state=0))


def test_mlp_quantizes_smaller_with_a_small_metric_drop(mlp: bytes) -> None:
    decision = decide(mlp)
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
    assert set(report.to_dict()) >= {"size_before", "size_after", "size_ratio", "drop_points",
                                     "latency_ms_before", "latency_ms_after"}

    shipped = policy(mlp, "auto")
    assert shipped.applied and len(shipped.model) == shipped.report["size_after"] < len(mlp)
    assert shipped.reason.startswith("MatMul/Gemm weights are") and "drop" in shipped.reason
    assert opsets_of(shipped.model)[""] == opsets_of(mlp)[""]  # already >= 11: not lifted
    assert shipped.manifest_block()["metric"] == "accuracy"


def test_a_too_strict_tolerance_refuses(mlp: bytes) -> None:
    with pytest.raises(PackagingError, match=r"quantized model refused: int8 holdout accuracy dropped "
                       r".* more than max_metric_drop -50\. Use --quantize none or auto\."):
        policy(mlp, "int8", max_metric_drop=-50.0)
    auto = policy(mlp, "auto", max_metric_drop=-50.0)  # auto ships float and says why
    assert not auto.applied and auto.model == mlp
    assert auto.reason.endswith("more than max_metric_drop -50; shipping float")


def test_a_target_below_the_quantizer_opset(mlp: bytes) -> None:
    """onnxruntime's quantizer lifts models to opset 11: known before anything is quantized."""
    old = QUANTIZER_MIN_OPSET - 1
    with pytest.raises(PackagingError, match=rf"int8 model refused: the model does not fit board "
                       rf"\(onnxruntime 1\.16\.0\): int8 needs ai\.onnx opset 11 .* up to {old}"):
        policy(mlp, "int8", max_opset=old)
    auto = policy(mlp, "auto", max_opset=old)
    assert not auto.applied and auto.model == mlp and auto.report == {}
    assert auto.reason.startswith("int8 does not fit (") and auto.reason.endswith("shipping float")


def test_one_policy_vocabulary(mlp: bytes) -> None:
    assert POLICIES == ("auto", "int8", "none")
    assert QuantizationPolicy.model_fields["policy"].annotation.__args__ == POLICIES
    none = policy(mlp, "none")
    assert not none.applied and none.model == mlp and none.reason == "policy none"
    for old in ("always", "never"):  # convert.quantize's former spelling is gone
        with pytest.raises(UsageError, match=rf"policy '{old}' is not one of auto, int8, none"):
            policy(mlp, old)


def test_lower_is_better_metrics_flip_the_sign(mlp: bytes) -> None:
    y_num = Y_TEST.astype(float)

    def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(mean_absolute_error(y_true.astype(float), y_pred.astype(float)))

    report = compare(mlp, quantize_dynamic_int8(mlp), X_TEST, y_num, task="classification",
                     metric=mae, metric_name="mae", greater_is_better=False, runs=2)
    assert report.drop_points == pytest.approx((report.metric_after - report.metric_before) * 100)


def test_auto_never_quantizes_a_random_forest() -> None:
    forest = onnx_bytes(RandomForestClassifier(n_estimators=5, max_depth=6, random_state=0))
    decision = decide(forest)
    assert not decision.quantize and "tree ensembles" in decision.reason
    shipped = policy(forest, "auto")
    assert shipped.model == forest and not shipped.applied and shipped.report == {}


def test_auto_skips_a_linear_model_without_matmul() -> None:
    linear = onnx_bytes(LogisticRegression(max_iter=300))
    decision = decide(linear)
    assert not decision.quantize and decision.reason == "no MatMul/Gemm weights to quantize"
    assert not policy(linear, "auto").applied
    forced = policy(linear, "int8")  # int8 quantizes whatever it can, judged all the same
    assert forced.applied and forced.reason.startswith("policy int8; holdout accuracy drop")
