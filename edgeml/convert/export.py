"""Convert a whole fitted pipeline (preprocessing and model) to one ONNX model.

Inputs: one per raw feature, shape ``[None, 1]``, named as the feature:
``float32`` for numeric columns (NaN allowed, the imputer is in the graph),
``string`` for categorical and text columns (missing is ``""``).

Outputs (plain tensors, no ZipMap):

==============  =================================================================
task            outputs
==============  =================================================================
classification  ``label`` [N] (class; string or int64) and ``probabilities`` [N, C]
                (columns in ``classes`` order)
regression      ``prediction`` [N, 1] float32 (skl2onnx's ``variable``, renamed)
anomaly         ``label`` [N] int64 (1 normal, -1 anomaly) and ``scores`` [N, 1]
                (``decision_function``; below 0 is an anomaly)
==============  =================================================================

Versions: the ai.onnx and ai.onnx.ml opsets are the target runtime's maxima
capped by what skl2onnx emits (see :mod:`edgeml.convert.limits`); the IR version
is then lowered to ``min(model's, target's max)``.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edgeml.bundle.manifest import OnnxInfo, OutputSpec
from edgeml.convert.converters import ensure_optional_converters, iter_steps
from edgeml.convert.graph_names import rename_outputs, restore_input_names
from edgeml.convert.limits import (
    ML_DOMAIN,
    SKL2ONNX_MAX_OPSET,
    RuntimeLimits,
    check_runtime,
    conversion_opsets,
    limits_for_opset,
    min_onnxruntime,
    opsets_of,
    runtime_limits,
)
from edgeml.errors import ConversionError, EdgeMLError, PackagingError

__all__ = ["OUTPUT_NAMES", "ExportResult", "TensorInfo", "features_to_onnx", "to_onnx"]

TASKS = ("classification", "regression", "anomaly")
# Canonical output names per task, in the order skl2onnx emits them.
OUTPUT_NAMES: Mapping[str, tuple[str, ...]] = {
    "classification": ("label", "probabilities"),
    "regression": ("prediction",),
    "anomaly": ("label", "scores"),
}
_MODEL_KIND = {"classification": "classifier", "regression": "regressor", "anomaly": "anomaly"}
_PROTOBUF_BOOL_WARNING = r".*AttributeProto\.ints: Expected an int, got a boolean"
_FEATURE_DTYPES = {"numeric": "float32", "categorical": "string", "text": "string"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # float32 | float64 | int64 | string
    shape: list[int | str | None]


@dataclass(frozen=True)
class ExportResult:
    """The converted model and the facts a manifest needs about it."""

    model: Any  # onnx.ModelProto
    task: str
    opsets: dict[str, int]  # domain ("" is ai.onnx) -> opset
    ir_version: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    output_spec: OutputSpec
    size_bytes: int
    min_onnxruntime: str

    @property
    def opset(self) -> int:
        return self.opsets.get("", 0)

    def to_bytes(self) -> bytes:
        return bytes(self.model.SerializeToString())

    def onnx_info(self, *, quantized: bool = False) -> OnnxInfo:
        return OnnxInfo(self.opset, self.ir_version, self.min_onnxruntime, quantized)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready."""
        return {
            "task": self.task,
            "opsets": dict(self.opsets),
            "ir_version": self.ir_version,
            "inputs": [asdict(t) for t in self.inputs],
            "outputs": [asdict(t) for t in self.outputs],
            "output_spec": asdict(self.output_spec),
            "size_bytes": self.size_bytes,
            "min_onnxruntime": self.min_onnxruntime,
        }


def to_onnx(
    pipeline: Any,
    features: Sequence[Mapping[str, Any]],
    *,
    task: str,
    target_opset: int | None = None,
    classes: Sequence[str] | None = None,
    runtime: RuntimeLimits | str | None = None,
) -> ExportResult:
    """Convert the fitted ``pipeline`` (raw feature frame in, predictions out) to ONNX.

    ``features`` are model.json's feature dicts (``name``, ``kind``; other keys ignored), in
    the frame's column order. Versions come from ``runtime`` (RuntimeLimits or an
    onnxruntime version string) if given, else from ``target_opset`` (ML opset and IR
    version chosen safe for it), else from the onnxruntime installed here.
    ``classes`` (classification) must equal the model's ``classes_`` as strings.
    """
    if task not in TASKS:
        raise ConversionError(f"task {task!r} is not one of {', '.join(TASKS)}")
    ensure_optional_converters()
    limits = _limits(runtime, target_opset)
    final = _check_pipeline(pipeline, task)
    initial_types = _initial_types(features, pipeline)
    model_classes = _classes(final, task, classes)
    steps = list(iter_steps(pipeline))
    model = _convert(pipeline, initial_types, conversion_opsets(limits))
    rename_outputs(model, OUTPUT_NAMES[task])
    restore_input_names(model, [f["name"] for f in features])
    for hook in {id(s.entry.postprocess): s.entry.postprocess for s in steps if s.entry.postprocess}.values():
        hook(model)
    model.ir_version = min(int(model.ir_version), limits.ir_version)
    with _converter_errors():
        import onnx

        onnx.checker.check_model(model)
    try:
        check_runtime(model, limits)
    except PackagingError as exc:
        raise ConversionError(str(exc)) from exc

    inputs = [_tensor_info(v) for v in model.graph.input]
    names = [f["name"] for f in features]
    if [i.name for i in inputs] != names:
        raise ConversionError(
            f"ONNX inputs {[i.name for i in inputs]} do not match the features {names}"
        )
    outputs = [_tensor_info(v) for v in model.graph.output]
    return ExportResult(
        model=model,
        task=task,
        opsets=opsets_of(model),
        ir_version=int(model.ir_version),
        inputs=inputs,
        outputs=outputs,
        output_spec=_output_spec(task, outputs, model_classes),
        size_bytes=model.ByteSize(),
        min_onnxruntime=min_onnxruntime(model),
    )


def features_to_onnx(head: Any, inputs: Sequence[tuple[str, str]], opsets: Mapping[str, int]) -> Any:
    """Convert the transforming head of a pipeline (``pipeline[:-1]``) on its own.

    ``inputs`` are (name, "float32" | "string"); the output is the final estimator's input
    as a device computes it (float32). Used by the parity gate to tell float32 rounding
    at a split threshold from a conversion error.
    """
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    types = {"float32": FloatTensorType, "string": StringTensorType}
    initial = [(name, types[dtype]([None, 1])) for name, dtype in inputs]
    target = {"": opsets.get("", SKL2ONNX_MAX_OPSET), ML_DOMAIN: min(opsets.get(ML_DOMAIN, 3), 3)}
    return _convert(head, initial, target)


# -- helpers -----------------------------------------------------------------


def _convert(pipeline: Any, initial_types: list[tuple[str, Any]], target_opset: Mapping[str, int]) -> Any:
    """skl2onnx with the registry's options, errors mapped to ConversionError."""
    from skl2onnx import convert_sklearn

    pipeline = _without_passthrough(pipeline)
    options = {id(s.step): s.entry.options_for(s.step) for s in iter_steps(pipeline) if not s.nested}
    with _converter_errors(), warnings.catch_warnings():
        # skl2onnx's tree converters put numpy bools into AttributeProto.ints: protobuf 6
        # warns once per value (protobuf 7 refuses, see _converter_errors).
        warnings.filterwarnings("ignore", message=_PROTOBUF_BOOL_WARNING, category=DeprecationWarning)
        return convert_sklearn(
            pipeline,
            initial_types=initial_types,
            options={k: v for k, v in options.items() if v},
            target_opset=dict(target_opset),
        )



def _limits(runtime: RuntimeLimits | str | None, target_opset: int | None) -> RuntimeLimits:
    if isinstance(runtime, RuntimeLimits):
        limits = runtime
    elif isinstance(runtime, str):
        limits = runtime_limits(runtime)
    elif target_opset is not None:
        return limits_for_opset(target_opset)
    else:
        import onnxruntime

        limits = runtime_limits(onnxruntime.__version__)
    if target_opset is not None:
        if target_opset > limits.opset:
            raise ConversionError(
                f"target_opset {target_opset} is above what onnxruntime {limits.onnxruntime} "
                f"implements ({limits.opset})"
            )
        limits = RuntimeLimits(limits.onnxruntime, target_opset, limits.ml_opset, limits.ir_version, limits.source)
    return limits


def _check_pipeline(pipeline: Any, task: str) -> Any:
    from sklearn.pipeline import Pipeline

    if not isinstance(pipeline, Pipeline):
        raise ConversionError(f"expected a fitted sklearn Pipeline, got {type(pipeline).__name__}")
    steps = list(iter_steps(pipeline))  # raises UnsupportedStepError naming the step
    final = pipeline.steps[-1][1]
    entry = next(s.entry for s in steps if s.step is final)
    if entry.kind != _MODEL_KIND[task]:
        raise ConversionError(
            f"the pipeline's last step {type(final).__name__} is a {entry.kind}, "
            f"but the task is {task} (needs a {_MODEL_KIND[task]})"
        )
    if task == "classification" and not hasattr(final, "predict_proba"):
        raise ConversionError(
            f"{type(final).__name__} has no predict_proba, so it cannot give the probabilities "
            f"output: wrap LinearSVC in CalibratedClassifierCV, use SGDClassifier(loss='log_loss' or "
            f"'modified_huber'), SVC(probability=True)"
        )
    return final


def _initial_types(features: Sequence[Mapping[str, Any]], pipeline: Any) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    if not features:
        raise ConversionError("features: the model needs at least one input feature")
    types = {"float32": FloatTensorType, "string": StringTensorType}
    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for n, f in enumerate(features):
        name, kind = f.get("name"), f.get("kind")
        if not isinstance(name, str) or not name:
            raise ConversionError(f"features[{n}].name: must be a non-empty string")
        if kind not in _FEATURE_DTYPES:
            raise ConversionError(f"features[{n}].kind: {kind!r} is not one of {', '.join(_FEATURE_DTYPES)}")
        dtype = f.get("dtype") or _FEATURE_DTYPES[kind]
        if dtype != _FEATURE_DTYPES[kind]:
            raise ConversionError(f"features[{n}].dtype: {kind} features are {_FEATURE_DTYPES[kind]}, not {dtype}")
        if name in seen:
            raise ConversionError(f"features[{n}].name: {name!r} appears twice")
        seen.add(name)
        out.append((name, types[dtype]([None, 1])))
    fitted = getattr(pipeline, "feature_names_in_", None)
    if fitted is not None and [str(c) for c in fitted] != [n for n, _t in out]:
        raise ConversionError(
            f"features {[n for n, _t in out]} differ from the columns the pipeline was fitted on "
            f"{[str(c) for c in fitted]}"
        )
    return out


def _classes(final: Any, task: str, classes: Sequence[str] | None) -> list[str] | None:
    if task != "classification":
        return None
    fitted = [str(c) for c in final.classes_]
    if classes is not None and [str(c) for c in classes] != fitted:
        raise ConversionError(f"classes {list(classes)} differ from the model's classes_ {fitted}")
    return fitted


def _is_passthrough(step: Any) -> bool:
    return step is None or (isinstance(step, str) and step == "passthrough")


def _without_passthrough(obj: Any) -> Any:
    """A shallow copy without "passthrough" pipeline steps, which skl2onnx cannot parse.

    The fitted leaf steps are shared, so options keyed by their id() still apply.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if isinstance(obj, Pipeline):
        steps = [(name, _without_passthrough(s)) for name, s in obj.steps if not _is_passthrough(s)]
        if not steps:
            return "passthrough"
        new = copy.copy(obj)
        new.steps = steps
        return new
    if isinstance(obj, ColumnTransformer):
        new = copy.copy(obj)
        new.transformers_ = [
            (name, trans if isinstance(trans, str) else _without_passthrough(trans), cols)
            for name, trans, cols in obj.transformers_
        ]
        return new
    return obj


@contextlib.contextmanager
def _converter_errors() -> Iterator[None]:
    """Map skl2onnx/onnx failures to ConversionError at the boundary."""
    try:
        yield
    except EdgeMLError:
        raise
    except TypeError as exc:
        if "AttributeProto" in str(exc) and "boolean" in str(exc):
            from google.protobuf import __version__ as pb_version

            raise ConversionError(
                f"ONNX conversion failed under protobuf {pb_version}: protobuf 7 rejects the booleans "
                f"skl2onnx writes into AttributeProto.ints (HistGradientBoosting trees). Install "
                f"protobuf 6: pip install 'protobuf>=4,<7' (edgeml's pyproject pins it)"
            ) from exc
        raise ConversionError(f"skl2onnx could not convert the pipeline: TypeError: {exc}") from exc
    except Exception as exc:
        raise ConversionError(
            f"skl2onnx could not convert the pipeline: {type(exc).__name__}: {exc}"
        ) from exc


def _tensor_info(value: Any) -> TensorInfo:
    from onnx import TensorProto

    tt = value.type.tensor_type
    dtype = {"float": "float32", "double": "float64"}.get(
        TensorProto.DataType.Name(tt.elem_type).lower(), TensorProto.DataType.Name(tt.elem_type).lower()
    )
    shape: list[int | str | None] = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
    ]
    return TensorInfo(value.name, dtype, shape)


def _output_spec(task: str, outputs: list[TensorInfo], classes: list[str] | None) -> OutputSpec:
    by_name = {o.name: o for o in outputs}
    if task == "classification":
        return OutputSpec(
            label="label", probabilities="probabilities", classes=classes,
            label_dtype=by_name["label"].dtype,
        )
    if task == "regression":
        return OutputSpec(prediction="prediction")
    return OutputSpec(label="label", score="scores", label_dtype=by_name["label"].dtype)

