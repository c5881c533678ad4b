"""The converter registry: which pipeline steps convert to ONNX, and with which options.

Each allowed step class (the pipeline-shape contract in TEAM.md) maps to a
:class:`StepConverter`: the library that converts it, its conversion options for
skl2onnx (``zipmap=False`` on every classifier so outputs are plain tensors), and
optional hooks for per-instance options and for nested estimators. Registration
refuses silent overwrites; a step without an entry fails with
:class:`UnsupportedStepError` listing the supported classes.

Also registered here: an skl2onnx shape calculator and converter for edgeml's
own ``OutlierClipper`` (``lower_``/``upper_`` per column -> ``Min(Max(x, lower), upper)``,
NaN kept),
and, when installed, XGBoost and LightGBM through onnxmltools.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from sklearn import (
    calibration,
    compose,
    decomposition,
    ensemble,
    feature_selection,
    impute,
    linear_model,
    naive_bayes,
    neighbors,
    neural_network,
    pipeline,
    preprocessing,
    svm,
    tree,
)
from sklearn.feature_extraction.text import TfidfVectorizer

from edgeml.convert.tokens import check_token_pattern
from edgeml.errors import ConversionError, UnsupportedStepError

__all__ = [
    "KINDS",
    "REGISTRY",
    "ConverterRegistry",
    "Step",
    "StepConverter",
    "ensure_optional_converters",
    "iter_steps",
    "register_outlier_clipper",
]

KINDS = ("container", "transformer", "classifier", "regressor", "anomaly")
CLASSIFIER_OPTIONS: Mapping[str, Any] = MappingProxyType({"zipmap": False})
_NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})


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


def _sgd_options(step: Any) -> dict[str, Any]:
    if step.loss != "log_loss":
        raise ConversionError(
            f"SGDClassifier(loss={step.loss!r}) does not convert with parity: its predict() is not the "
            f"argmax of predict_proba(); use loss='log_loss'"
        )
    return {}


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


# -- the table ---------------------------------------------------------------

_T, _C, _R, _A = "transformer", "classifier", "regressor", "anomaly"

_SKLEARN: tuple[tuple[type, str, str], ...] = (
    (pipeline.Pipeline, "container", ""),
    (compose.ColumnTransformer, "container", ""),
    (impute.SimpleImputer, _T, ""),
    (preprocessing.StandardScaler, _T, ""),
    (preprocessing.MinMaxScaler, _T, ""),
    (preprocessing.RobustScaler, _T, ""),
    (preprocessing.MaxAbsScaler, _T, ""),
    (preprocessing.OneHotEncoder, _T, ""),
    (preprocessing.OrdinalEncoder, _T, ""),
    (preprocessing.PolynomialFeatures, _T, ""),
    (feature_selection.VarianceThreshold, _T, ""),
    (feature_selection.SelectKBest, _T, ""),
    (feature_selection.SelectFromModel, _T, "only get_support() is converted"),
    (decomposition.PCA, _T, ""),
    (linear_model.LogisticRegression, _C, ""),
    (linear_model.LinearRegression, _R, ""),
    (linear_model.Ridge, _R, ""),
    (linear_model.Lasso, _R, ""),
    (linear_model.ElasticNet, _R, ""),
    (linear_model.SGDRegressor, _R, ""),
    (tree.DecisionTreeClassifier, _C, ""),
    (tree.DecisionTreeRegressor, _R, ""),
    (ensemble.RandomForestClassifier, _C, ""),
    (ensemble.RandomForestRegressor, _R, ""),
    (ensemble.ExtraTreesClassifier, _C, ""),
    (ensemble.ExtraTreesRegressor, _R, ""),
    (ensemble.IsolationForest, _A, ""),
    (svm.SVC, _C, "needs probability=True"),
    (svm.SVR, _R, ""),
    (svm.LinearSVR, _R, ""),
    (neighbors.KNeighborsClassifier, _C, ""),
    (neighbors.KNeighborsRegressor, _R, ""),
    (naive_bayes.GaussianNB, _C, ""),
    (neural_network.MLPClassifier, _C, ""),
    (neural_network.MLPRegressor, _R, ""),
)

REGISTRY = ConverterRegistry()
for _cls, _kind, _note in _SKLEARN:
    REGISTRY.register(
        StepConverter(_cls, _kind, options=CLASSIFIER_OPTIONS if _kind == _C else _NO_OPTIONS, note=_note)
    )
REGISTRY.register(StepConverter(TfidfVectorizer, _T, instance_options=_tfidf_options))
REGISTRY.register(
    StepConverter(
        linear_model.SGDClassifier, _C, options=CLASSIFIER_OPTIONS, instance_options=_sgd_options,
        note="loss='log_loss' only",
    )
)
REGISTRY.register(StepConverter(svm.LinearSVC, _C, note="no predict_proba: only inside CalibratedClassifierCV"))
for _cls, _kind in (
    (ensemble.HistGradientBoostingClassifier, _C),
    (ensemble.HistGradientBoostingRegressor, _R),
):
    REGISTRY.register(
        StepConverter(
            _cls, _kind, options=CLASSIFIER_OPTIONS if _kind == _C else _NO_OPTIONS,
            postprocess=_widen_tree_thresholds, note="needs protobuf<7; thresholds widened",
        )
    )
REGISTRY.register(
    StepConverter(
        calibration.CalibratedClassifierCV,
        _C,
        options=CLASSIFIER_OPTIONS,
        children=_calibrated_children,
        note="wraps LinearSVC to give it probabilities",
    )
)


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


def register_outlier_clipper(cls: type) -> StepConverter:
    """Register an OutlierClipper class (learned ``lower_``/``upper_`` arrays) with skl2onnx and edgeml.

    Idempotent for the same class: a second call returns the existing entry.
    """
    from skl2onnx import update_registered_converter

    existing = REGISTRY.get(cls)
    if existing is not None:
        return existing
    update_registered_converter(cls, f"Edgeml{cls.__name__}", _clipper_shape, _clipper_convert)
    return REGISTRY.register(StepConverter(cls, _T, library="edgeml", note="clips each column"))


# -- optional converters -----------------------------------------------------


def _register_outlier_clipper_if_present() -> None:
    try:
        from edgeml.train.transformers import OutlierClipper  # type: ignore[attr-defined]
    except ImportError:
        return
    register_outlier_clipper(OutlierClipper)


def _register_onnxmltools(module: str, classes: tuple[str, str], converter: tuple[str, str]) -> None:
    import importlib

    try:
        lib = importlib.import_module(module)
        conv = getattr(importlib.import_module(converter[0]), converter[1])
    except ImportError:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    clf, reg = (getattr(lib, name) for name in classes)
    if clf not in REGISTRY:
        update_registered_converter(
            clf, f"{module}{classes[0]}", calculate_linear_classifier_output_shapes, conv,
            options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
        )
        REGISTRY.register(StepConverter(clf, _C, library="onnxmltools", options=CLASSIFIER_OPTIONS))
    if reg not in REGISTRY:
        update_registered_converter(reg, f"{module}{classes[1]}", calculate_linear_regressor_output_shapes, conv)
        REGISTRY.register(StepConverter(reg, _R, library="onnxmltools"))


_OPTIONAL_DONE: list[bool] = []


def ensure_optional_converters() -> None:
    """Register converters whose classes live in optional or later-imported modules (once)."""
    _register_outlier_clipper_if_present()
    if _OPTIONAL_DONE:
        return
    _register_onnxmltools(
        "xgboost", ("XGBClassifier", "XGBRegressor"),
        ("onnxmltools.convert.xgboost.operator_converters.XGBoost", "convert_xgboost"),
    )
    _register_onnxmltools(
        "lightgbm", ("LGBMClassifier", "LGBMRegressor"),
        ("onnxmltools.convert.lightgbm.operator_converters.LightGbm", "convert_lightgbm"),
    )
    _OPTIONAL_DONE.append(True)
