"""The converter registry: which pipeline steps convert to ONNX, and with which options.

The converter column of :mod:`edgeml.catalog`: every step and every installed family
estimator the catalog lists maps to a :class:`StepConverter` (the library that converts it
and its skl2onnx options, ``zipmap=False`` on every classifier so outputs are plain
tensors), plus the hooks that are converter code: per-instance options, nested estimators
and model post-processing. Registration refuses silent overwrites; a step without an entry
fails with :class:`UnsupportedStepError` listing the supported classes.

edgeml's own converters, installed in skl2onnx by :func:`ensure_optional_converters`:

- ``OutlierClipper`` (``lower_``/``upper_`` per column -> ``Min(Max(x, lower), upper)``,
  NaN kept);
- ``IsolationForest``: one TreeEnsemble node (:mod:`edgeml.convert.isolation_forest`);
- ``SGDClassifier(loss="modified_huber")``: skl2onnx's probabilities, but the label is the
  argmax of the decision function as in scikit-learn (skl2onnx takes the argmax of the
  clipped probabilities, which ties at 1 and picks the first class);

and, when installed, XGBoost and LightGBM through onnxmltools.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from sklearn import compose, pipeline

from edgeml.catalog import CATALOG, CLASSIFIER_OPTIONS, EDGEML, KINDS, ONNXMLTOOLS
from edgeml.convert.tokens import check_token_pattern
from edgeml.errors import ConversionError, UnsupportedStepError

__all__ = [
    "CLASSIFIER_OPTIONS",
    "KINDS",
    "REGISTRY",
    "ConverterRegistry",
    "Step",
    "StepConverter",
    "ensure_optional_converters",
    "iter_steps",
    "register_outlier_clipper",
]


@dataclass(frozen=True)
class StepConverter:
    """How one step class converts."""

    cls: type
    kind: str  # container | transformer | classifier | regressor | anomaly
    library: str = "skl2onnx"  # skl2onnx | onnxmltools | edgeml
    options: Mapping[str, Any] = field(default_factory=dict)
    # Per-instance options merged over ``options`` (may raise ConversionError).
    instance_options: Callable[[Any], dict[str, Any]] | None = None
    # Nested estimators that must be supported too (e.g. CalibratedClassifierCV's base).
    children: Callable[[Any], list[tuple[str, Any]]] | None = None
    # Edits the converted ModelProto when this step is in the pipeline.
    postprocess: Callable[[Any], None] | None = None
    note: str = ""

    @property
    def name(self) -> str:
        return self.cls.__name__

    def options_for(self, step: Any) -> dict[str, Any]:
        opts = dict(self.options)
        if self.instance_options is not None:
            opts.update(self.instance_options(step))
        return opts


class ConverterRegistry:
    """Step class -> :class:`StepConverter`; exact class match, no silent overwrite."""

    def __init__(self) -> None:
        self._entries: dict[type, StepConverter] = {}

    def register(self, entry: StepConverter, *, replace: bool = False) -> StepConverter:
        if entry.kind not in KINDS:
            raise ValueError(f"kind {entry.kind!r} is not one of {KINDS}")
        old = self._entries.get(entry.cls)
        if old is not None and not replace:
            raise ValueError(
                f"a converter for {entry.cls.__module__}.{entry.name} is already registered "
                f"({old.library}); pass replace=True to overwrite it"
            )
        self._entries[entry.cls] = entry
        return entry

    def __contains__(self, cls: object) -> bool:
        return cls in self._entries

    def get(self, cls: type) -> StepConverter | None:
        return self._entries.get(cls)

    def supported(self) -> list[str]:
        return sorted({e.name for e in self._entries.values()})

    def entries(self) -> list[StepConverter]:
        return sorted(self._entries.values(), key=lambda e: e.name)

    def lookup(self, step: Any, path: str = "") -> StepConverter:
        entry = self._entries.get(type(step))
        if entry is None:
            where = f"{path}: " if path else ""
            raise UnsupportedStepError(
                f"{where}{type(step).__name__} has no ONNX converter in edgeml; supported steps: "
                + ", ".join(self.supported())
            )
        return entry


# -- hooks -------------------------------------------------------------------


def _tfidf_options(step: Any) -> dict[str, Any]:
    if step.sublinear_tf:
        raise ConversionError(
            "TfidfVectorizer(sublinear_tf=True) does not convert with parity: skl2onnx 1.20 "
            "computes log(1 + tf) where scikit-learn computes 1 + log(tf); use sublinear_tf=False"
        )
    if step.analyzer != "word":
        raise ConversionError(f"TfidfVectorizer(analyzer={step.analyzer!r}) does not convert; use 'word'")
    for attr in ("preprocessor", "tokenizer", "strip_accents"):
        if getattr(step, attr) is not None:
            raise ConversionError(f"TfidfVectorizer({attr}=...) does not convert to ONNX; leave it None")
    return {"tokenexp": check_token_pattern(step.token_pattern), "locale": "C"}


# A threshold of HistGradientBoosting often equals a training value exactly (percentile
# midpoints on repeated values: imputed medians, quantized sensors). scikit-learn sends
# such a value left (x <= t); in float32 it lands on either side of t. Widening each
# threshold by 1e-6 * max(|t|, 1) sends it left in ONNX too.
THRESHOLD_WIDENING = 1e-6


def _widen_tree_thresholds(model: Any) -> None:
    for node in model.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: a for a in node.attribute}
        modes = set(attrs["nodes_modes"].strings) if "nodes_modes" in attrs else set()
        if "nodes_values" not in attrs or not modes <= {b"BRANCH_LEQ", b"LEAF"}:
            continue
        values = np.asarray(attrs["nodes_values"].floats, dtype=np.float64)
        wide = (values + np.maximum(np.abs(values), 1.0) * THRESHOLD_WIDENING).astype(np.float32)
        wide = np.maximum(wide, values.astype(np.float32))
        del attrs["nodes_values"].floats[:]
        attrs["nodes_values"].floats.extend(wide.tolist())


def _calibrated_children(step: Any) -> list[tuple[str, Any]]:
    fitted = getattr(step, "calibrated_classifiers_", None) or []
    return [(f"calibrated[{i}]", c.estimator) for i, c in enumerate(fitted)]


# -- the table (from the catalog) -----------------------------------------------

_HOOKS: Mapping[str, Mapping[str, Any]] = {
    "TfidfVectorizer": {"instance_options": _tfidf_options},
    "HistGradientBoostingClassifier": {"postprocess": _widen_tree_thresholds},
    "HistGradientBoostingRegressor": {"postprocess": _widen_tree_thresholds},
    "CalibratedClassifierCV": {"children": _calibrated_children},
}

REGISTRY = ConverterRegistry()
for _item in CATALOG.convertible():
    REGISTRY.register(StepConverter(
        _item.cls, _item.kind, library=_item.library, options=_item.options, note=_item.note,
        **_HOOKS.get(_item.cls.__name__, {}),
    ))


# -- walking a pipeline ------------------------------------------------------


class Step(NamedTuple):
    path: str  # e.g. "preprocess/numeric/scale"
    step: Any
    entry: StepConverter
    nested: bool  # inside another estimator (converted by it, gets no options of its own)


def iter_steps(obj: Any, path: str = "", nested: bool = False) -> Iterator[Step]:
    """Every step of a fitted pipeline, depth first, with its path and converter entry.

    Raises UnsupportedStepError (naming the path) for the first step without a converter.
    """
    entry = REGISTRY.lookup(obj, path or type(obj).__name__)
    yield Step(path or type(obj).__name__, obj, entry, nested)
    children: list[tuple[str, Any]] = []
    if isinstance(obj, pipeline.Pipeline):
        children = [(name, step) for name, step in obj.steps]
    elif isinstance(obj, compose.ColumnTransformer):
        children = [(name, trans) for name, trans, _cols in obj.transformers_]
    elif entry.children is not None:
        children = entry.children(obj)
        nested = True
    for name, child in children:
        if child is None or (isinstance(child, str) and child in ("passthrough", "drop")):
            continue
        yield from iter_steps(child, f"{path}/{name}" if path else name, nested)


# -- OutlierClipper (edgeml.train.transformers) ------------------------------


def _clipper_shape(operator: Any) -> None:
    from skl2onnx.common.utils import check_input_and_output_numbers

    check_input_and_output_numbers(operator, input_count_range=1, output_count_range=1)
    x = operator.inputs[0]
    n_cols = len(np.ravel(operator.raw_operator.lower_))
    operator.outputs[0].type = x.type.__class__([x.get_first_dimension(), n_cols])


def _clipper_convert(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.common.data_types import guess_numpy_type, guess_proto_type

    op = operator.raw_operator
    x = operator.inputs[0]
    dtype = guess_numpy_type(x.type)
    proto = guess_proto_type(x.type)
    names = []
    for label, values in (("lower", op.lower_), ("upper", op.upper_)):
        arr = np.asarray(values, dtype=dtype).reshape(1, -1)
        name = scope.get_unique_variable_name(f"clip_{label}")
        container.add_initializer(name, proto, list(arr.shape), arr.ravel().tolist())
        names.append(name)
    low = scope.get_unique_variable_name("clipped_low")
    clipped = scope.get_unique_variable_name("clipped")
    nan = scope.get_unique_variable_name("is_nan")
    container.add_node("Max", [x.full_name, names[0]], low, name=scope.get_unique_operator_name("ClipLow"))
    container.add_node("Min", [low, names[1]], clipped, name=scope.get_unique_operator_name("ClipHigh"))
    # NaN passes through unchanged, as in OutlierClipper.transform (np.clip); ONNX leaves
    # Max/Min of NaN to the implementation.
    container.add_node("IsNaN", [x.full_name], nan, name=scope.get_unique_operator_name("ClipIsNaN"))
    container.add_node(
        "Where", [nan, x.full_name, clipped], operator.outputs[0].full_name,
        name=scope.get_unique_operator_name("ClipKeepNaN"),
    )


def _install_clipper(cls: type) -> None:
    from skl2onnx import update_registered_converter

    update_registered_converter(cls, f"Edgeml{cls.__name__}", _clipper_shape, _clipper_convert)


def register_outlier_clipper(cls: type) -> StepConverter:
    """Register an OutlierClipper class (learned ``lower_``/``upper_`` arrays) with skl2onnx and edgeml.

    Idempotent for the same class: a second call returns the existing entry.
    """
    _install_clipper(cls)
    existing = REGISTRY.get(cls)
    if existing is not None:
        return existing
    return REGISTRY.register(StepConverter(cls, "transformer", library=EDGEML, note="clips each column"))


# -- edgeml's and optional converters ----------------------------------------

_ONNXMLTOOLS = {
    "xgboost": ("onnxmltools.convert.xgboost.operator_converters.XGBoost", "convert_xgboost"),
    "lightgbm": ("onnxmltools.convert.lightgbm.operator_converters.LightGbm", "convert_lightgbm"),
}


def _register_onnxmltools() -> None:
    """skl2onnx converters for the catalog's installed onnxmltools families."""
    import importlib

    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    for fam, task in CATALOG.cases():
        if fam.converter != ONNXMLTOOLS or not fam.available or fam.requires not in _ONNXMLTOOLS:
            continue
        module, name = _ONNXMLTOOLS[fam.requires]
        try:
            conv = getattr(importlib.import_module(module), name)
        except ImportError:  # pragma: no cover - onnxmltools missing: skl2onnx will say so
            continue
        cls = fam.estimator_class(task)
        if task == "classification":
            update_registered_converter(
                cls, f"{fam.requires}{cls.__name__}", calculate_linear_classifier_output_shapes,
                conv, options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
            )
        else:
            update_registered_converter(
                cls, f"{fam.requires}{cls.__name__}", calculate_linear_regressor_output_shapes, conv
            )


_OPTIONAL_DONE: list[bool] = []


def ensure_optional_converters() -> None:
    """Install edgeml's own and the optional converters in skl2onnx (once per process)."""
    if _OPTIONAL_DONE:
        return
    from edgeml.convert.isolation_forest import register_isolation_forest
    from edgeml.convert.sgd import register_sgd_classifier
    from edgeml.train.transformers import OutlierClipper

    _install_clipper(OutlierClipper)
    register_isolation_forest()
    register_sgd_classifier()
    _register_onnxmltools()
    _OPTIONAL_DONE.append(True)
