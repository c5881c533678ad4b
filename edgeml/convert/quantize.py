"""Dynamic int8 quantization of a converted model: whether it pays, doing it, measuring it.

Only MatMul/Gemm weights are quantized (onnxruntime's ``quantize_dynamic``):
that is where an MLP keeps its parameters. Tree ensembles (ai.onnx.ml
``TreeEnsemble*``) and linear models converted to ``LinearClassifier`` /
``LinearRegressor`` have nothing it can shrink: :func:`decide` says so.

These are the mechanics. The policy (``auto`` | ``int8`` | ``none``) and the tolerance that
refuses a quantized model belong to packaging: :mod:`edgeml.package.quality`.

onnxruntime's quantizer lifts a model below ai.onnx opset 11 to opset 11
(``QUANTIZER_MIN_OPSET``) and leaves the ML opset and the IR version alone, so a target whose
runtime stops below opset 11 cannot run an int8 model; the packaging stage knows that before
quantizing.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.bundle.session import cpu_session
from edgeml.convert.parity import frame_to_feeds
from edgeml.errors import ConversionError

__all__ = [
    "QUANTIZER_MIN_OPSET",
    "QuantizationDecision",
    "QuantizationReport",
    "compare",
    "decide",
    "quantize_dynamic_int8",
]

QUANTIZER_MIN_OPSET = 11  # onnxruntime.quantization lifts older models to this ai.onnx opset
QUANTIZABLE_OPS = frozenset({"MatMul", "Gemm"})
TREE_OPS = frozenset({"TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"})
MIN_MATMUL_SHARE = 0.5  # MatMul/Gemm weights must be at least half of all parameters

Metric = Callable[[Any, Any], float]


@dataclass(frozen=True)
class QuantizationDecision:
    quantize: bool
    reason: str
    matmul_share: float  # fraction of initializer elements that feed MatMul/Gemm


@dataclass(frozen=True)
class QuantizationReport:
    """Before/after figures, measured side by side in one run."""

    size_before: int
    size_after: int
    metric_name: str
    metric_before: float
    metric_after: float
    drop_points: float  # (before - after) * 100, sign flipped when lower is better
    latency_ms_before: float  # batch-1 median
    latency_ms_after: float
    runs: int

    @property
    def size_ratio(self) -> float:
        return self.size_after / self.size_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size_ratio": self.size_ratio}


def _load(model_bytes: bytes) -> Any:
    import onnx

    return onnx.load_model_from_string(model_bytes)


def decide(model_bytes: bytes) -> QuantizationDecision:
    """Whether int8 pays for this model: MatMul/Gemm weights are most of its parameters."""
    graph = _load(model_bytes).graph
    sizes = {t.name: int(np.prod(t.dims)) if t.dims else 1 for t in graph.initializer}
    total = sum(sizes.values()) or 1
    in_matmul = {n for node in graph.node if node.op_type in QUANTIZABLE_OPS for n in node.input}
    share = sum(v for k, v in sizes.items() if k in in_matmul) / total
    trees = sorted({node.op_type for node in graph.node if node.op_type in TREE_OPS})
    if trees:
        return QuantizationDecision(False, f"tree ensembles ({', '.join(trees)}) are never quantized", share)
    if not in_matmul:
        return QuantizationDecision(False, "no MatMul/Gemm weights to quantize", share)
    if share < MIN_MATMUL_SHARE:
        return QuantizationDecision(
            False, f"MatMul/Gemm weights are only {share:.0%} of the parameters (< {MIN_MATMUL_SHARE:.0%})", share
        )
    return QuantizationDecision(True, f"MatMul/Gemm weights are {share:.0%} of the parameters", share)


class _DropPreprocessHint(logging.Filter):
    """onnxruntime's quantizer logs a hint on the root logger for every call; we know."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_dynamic_int8(model_bytes: bytes) -> bytes:
    """Dynamic int8 quantization of MatMul/Gemm weights (onnxruntime.quantization).

    The quantizer works on files, so the model goes through a temporary folder.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hint = _DropPreprocessHint()
    root = logging.getLogger()
    with tempfile.TemporaryDirectory(prefix="edgeml-quant-") as tmp:
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        src.write_bytes(model_bytes)
        root.addFilter(hint)
        try:
            quantize_dynamic(
                src, dst, op_types_to_quantize=sorted(QUANTIZABLE_OPS), weight_type=QuantType.QInt8,
                # shape inference cannot type outputs of ai.onnx.ml ops (Scaler before an
                # SGDClassifier's MatMul): without this the quantizer raises "Unable to find
                # data type for weight_name='matmul_result'"
                extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
            )
        except Exception as exc:
            raise ConversionError(f"onnxruntime could not quantize the model: {type(exc).__name__}: {exc}") from exc
        finally:
            root.removeFilter(hint)
        return dst.read_bytes()


def _predictions(sess: Any, feeds: dict[str, np.ndarray], task: str) -> np.ndarray:
    names = [o.name for o in sess.get_outputs()]
    want = "prediction" if task == "regression" else "label"
    out = sess.run([want if want in names else names[0]], feeds)[0]
    pred = np.ravel(out)
    return pred.astype(str) if task == "classification" else pred


def compare(
    original: bytes,
    quantized: bytes,
    X: Any,
    y: Any,
    *,
    task: str,
    metric: Metric,
    metric_name: str = "metric",
    greater_is_better: bool = True,
    runs: int = 50,
) -> QuantizationReport:
    """Size, holdout ``metric(y_true, y_pred)`` and batch-1 latency (median of ``runs``), before and after."""
    if runs < 1:
        raise ConversionError("runs must be >= 1")
    sessions = [cpu_session(original), cpu_session(quantized)]
    feeds = frame_to_feeds(X, [(i.name, i.type) for i in sessions[0].get_inputs()])
    y_true = np.asarray(y).astype(str) if task == "classification" else np.asarray(y)
    scores = [float(metric(y_true, _predictions(s, feeds, task))) for s in sessions]
    one = {k: v[:1] for k, v in feeds.items()}
    timings: list[list[float]] = [[], []]
    for s in sessions:  # warm up
        for _ in range(3):
            s.run(None, one)
    for _ in range(runs):  # interleaved, so machine noise hits both alike
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, one)
            timings[i].append((time.perf_counter() - t0) * 1000.0)
    sign = 1.0 if greater_is_better else -1.0
    return QuantizationReport(
        size_before=len(original),
        size_after=len(quantized),
        metric_name=metric_name,
        metric_before=scores[0],
        metric_after=scores[1],
        drop_points=sign * (scores[0] - scores[1]) * 100.0,
        latency_ms_before=statistics.median(timings[0]),
        latency_ms_after=statistics.median(timings[1]),
        runs=runs,
    )
