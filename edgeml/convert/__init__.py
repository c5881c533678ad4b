"""Host side: fitted scikit-learn pipeline -> one ONNX model, checked for parity.

::

    to_onnx(pipeline, features, task=..., runtime="1.16")  -> ExportResult (ModelProto + facts)
    check_parity(pipeline, model_bytes, X, task=...)        -> ParityReport (or ParityError)
    decide / quantize_dynamic_int8 / compare   (int8, MatMul-heavy models)
    runtime_limits("1.16") -> RuntimeLimits(opset, ml_opset, ir_version)

Which steps convert lives in ``edgeml.convert.converters.REGISTRY``.
"""

from __future__ import annotations

from edgeml.convert.converters import (
    REGISTRY,
    ConverterRegistry,
    StepConverter,
    iter_steps,
    register_outlier_clipper,
)
from edgeml.convert.export import OUTPUT_NAMES, ExportResult, TensorInfo, to_onnx
from edgeml.convert.limits import (
    RUNTIME_TABLE,
    RuntimeLimits,
    check_runtime,
    ir_version_of,
    limits_for_opset,
    min_onnxruntime,
    opset_of,
    opsets_of,
    runtime_limits,
)
from edgeml.convert.parity import ParityReport, check_parity, frame_to_feeds
from edgeml.convert.quantize import (
    QuantizationDecision,
    QuantizationReport,
    compare,
    decide,
    quantize_dynamic_int8,
)
from edgeml.convert.tokens import TOKEN_PATTERNS, check_token_pattern, token_pattern

__all__ = [
    "OUTPUT_NAMES",
    "REGISTRY",
    "RUNTIME_TABLE",
    "TOKEN_PATTERNS",
    "ConverterRegistry",
    "ExportResult",
    "ParityReport",
    "QuantizationDecision",
    "QuantizationReport",
    "RuntimeLimits",
    "StepConverter",
    "TensorInfo",
    "check_parity",
    "check_runtime",
    "check_token_pattern",
    "compare",
    "decide",
    "frame_to_feeds",
    "ir_version_of",
    "iter_steps",
    "limits_for_opset",
    "min_onnxruntime",
    "opset_of",
    "opsets_of",
    "quantize_dynamic_int8",
    "register_outlier_clipper",
    "runtime_limits",
    "to_onnx",
    "token_pattern",
]
