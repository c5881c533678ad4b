"""THE catalog of what edgeml can train and convert to ONNX (host side).

Both columns read this one table: training (:mod:`edgeml.train.steps`: which families and
params a recipe may name, checked when the recipe is loaded) and conversion
(:mod:`edgeml.convert.converters`: which classes convert, with which library and options).
``tests/test_catalog.py`` is generated from it: every family x task (and every convertible
value of every :class:`ParamRule`) is fitted on a tiny dataset, converted with these
options and checked for parity with onnxruntime.

::

    family x task -> estimator class ("module:Class"), defaults, converter library,
                     conversion options, ParamRules (values that convert, why others do not)
    step          -> class, kind, converter library, conversion options

Registration refuses silent overwrites (``replace=True`` to mean it, as in sklearn-onnx);
an unknown family gets an error listing the supported ones. Classes are named by string
and imported on use, so importing this module imports no scikit-learn.

Decisions documented here:

- Classifiers need ``predict_proba`` (the bundle contract has a ``probabilities``
  output). ``svm`` and ``linear_svm`` classifiers are therefore wrapped in
  ``CalibratedClassifierCV`` (sigmoid); recipe params go to the inner SVC/LinearSVC
  (searched as ``model__estimator__<param>``). ``svm`` uses ``ensemble=False`` (one SVC in
  the model, calibrated on cross-validated decisions) instead of ``SVC(probability=True)``,
  which scikit-learn 1.9 deprecates (FutureWarning).
- ``sgd`` classifiers default to ``loss="log_loss"`` and accept the two losses with
  ``predict_proba``: ``log_loss`` and ``modified_huber`` (edgeml's SGDClassifier converter
  labels ``modified_huber`` by the argmax of the decision function, as scikit-learn does).
- ``ridge``, ``lasso``, ``elastic_net``, ``linear_regression`` are regression-only;
  ``naive_bayes`` (GaussianNB) is classification-only; ``isolation_forest`` is the anomaly
  family (edgeml's own converter: one TreeEnsemble node, :mod:`edgeml.convert.isolation_forest`).
- ``xgboost`` is regression-only (XGBClassifier needs integer-encoded labels and edgeml keeps
  class labels as strings); ``xgboost`` and ``lightgbm`` need the optional package (and
  onnxmltools) and are offered only when it is installed.
- Every family with a ``random_state`` gets the recipe's ``split.seed`` unless the recipe's
  params set it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from edgeml.errors import UnsupportedStepError

__all__ = [
    "CATALOG",
    "CLASSIFIER_OPTIONS",
    "EDGEML",
    "FAMILIES",
    "KINDS",
    "ONNXMLTOOLS",
    "SKL2ONNX",
    "STEPS",
    "TASK_KINDS",
    "Catalog",
    "Convertible",
    "Family",
    "ParamRule",
    "Step",
    "import_class",
]

SKL2ONNX = "skl2onnx"
ONNXMLTOOLS = "onnxmltools"
EDGEML = "edgeml"  # edgeml's own converter, registered with skl2onnx by edgeml.convert
KINDS = ("container", "transformer", "classifier", "regressor", "anomaly")
TASK_KINDS: Mapping[str, str] = MappingProxyType(
    {"classification": "classifier", "regression": "regressor", "anomaly": "anomaly"}
)
CLASSIFIER_OPTIONS: Mapping[str, Any] = MappingProxyType({"zipmap": False})
_NONE: Mapping[str, Any] = MappingProxyType({})


def import_class(path: str) -> type:
    """``"module:Class"`` -> the class."""
    module, _, name = path.partition(":")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


@dataclass(frozen=True)
class ParamRule:
    """The values of one parameter that convert; any other value is refused with ``reason``.

    ``refused`` lists values known to fail; the generated test proves that each one does.
    """

    param: str
    allowed: tuple[Any, ...]
    reason: str
    tasks: tuple[str, ...]
    refused: tuple[Any, ...] = ()

    def problem(self, value: Any, estimator: str, library: str) -> str | None:
        """None if ``value`` converts, else the message a recipe author sees."""
        if value in self.allowed:
            return None
        use = " or ".join(repr(v) for v in self.allowed)
        return (f"{value!r} cannot be converted to ONNX by {library} for {estimator}: "
                f"{self.reason}; use {use}")


@dataclass(frozen=True)
class Step:
    """A preprocessing / feature step (or a wrapper) edgeml may put in a pipeline."""

    name: str
    cls: str  # "module:Class"
    kind: str = "transformer"
    converter: str = SKL2ONNX
    options: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Family:
    """A model family: the estimator class per task, its defaults and how it converts."""

    name: str
    estimators: Mapping[str, str]  # task -> "module:Class" (the class whose params a recipe sets)
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # task -> params
    converter: str = SKL2ONNX
    requires: str | None = None  # importable module needed (optional dependency)
    fixed: Mapping[str, str] = field(default_factory=dict)  # param a recipe may not set -> why
    rules: tuple[ParamRule, ...] = ()
    # task -> CalibratedClassifierCV kwargs: the estimator is wrapped for predict_proba
    calibrated: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # conversion options beyond the task defaults
    quick: Mapping[str, Any] = field(default_factory=dict)  # params for a fast fit on a tiny dataset (tests)
    note: str = ""

    @property
    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.estimators)

    def estimator_class(self, task: str) -> type:
        """The class whose parameters a recipe sets (the inner one when wrapped)."""
        return import_class(self.estimators[task])

    def param_prefix(self, task: str) -> str:
        """Prefix of this family's params inside the edgeml pipeline."""
        return "model__estimator__" if task in self.calibrated else "model__"

    def conversion_options(self, task: str) -> Mapping[str, Any]:
        base = CLASSIFIER_OPTIONS if TASK_KINDS[task] == "classifier" else _NONE
        return MappingProxyType({**base, **self.options})

    def rules_for(self, task: str) -> dict[str, ParamRule]:
        return {r.param: r for r in self.rules if task in r.tasks}

    def make(self, task: str, seed: int, params: Mapping[str, Any] | None = None) -> Any:
        """A new estimator with defaults, the seed (if it takes one) and ``params``."""
        cls = self.estimator_class(task)
        kwargs: dict[str, Any] = dict(self.defaults.get(task, {}))
        if "random_state" in cls().get_params():
            kwargs["random_state"] = seed
        kwargs.update(params or {})
        est = cls(**kwargs)
        if task in self.calibrated:
            from sklearn.calibration import CalibratedClassifierCV

            return CalibratedClassifierCV(est, **self.calibrated[task])
        return est


class Convertible(NamedTuple):
    """One class the converter column must know: how it converts."""

    cls: type
    kind: str
    library: str
    options: Mapping[str, Any]
    note: str


class Catalog:
    """Families and steps by name; registration refuses silent overwrites."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}
        self._steps: dict[str, Step] = {}
        self.families: Mapping[str, Family] = MappingProxyType(self._families)
        self.steps: Mapping[str, Step] = MappingProxyType(self._steps)

    def add_family(self, family: Family, *, replace: bool = False) -> Family:
        for task in family.tasks:
            if task not in TASK_KINDS:
                raise ValueError(f"{family.name}: task {task!r} is not one of {', '.join(TASK_KINDS)}")
        return self._add(self._families, family, replace, "family")

    def add_step(self, step: Step, *, replace: bool = False) -> Step:
        if step.kind not in KINDS:
            raise ValueError(f"{step.name}: kind {step.kind!r} is not one of {', '.join(KINDS)}")
        return self._add(self._steps, step, replace, "step")

    @staticmethod
    def _add(table: dict[str, Any], item: Any, replace: bool, what: str) -> Any:
        old = table.get(item.name)
        if old is not None and not replace:
            raise ValueError(f"a {what} named {item.name!r} is already in the catalog; "
                             f"pass replace=True to overwrite it")
        table[item.name] = item
        return item

    def supported(self, task: str | None = None) -> list[str]:
        """Names of the installed families, optionally only those for ``task``."""
        return [n for n, f in self._families.items()
                if f.available and (task is None or task in f.estimators)]

    def family(self, name: str) -> Family:
        fam = self._families.get(name)
        if fam is None:
            raise UnsupportedStepError(
                f"unknown model family {name!r}; supported: {', '.join(self.supported())}"
            )
        return fam

    def cases(self) -> Iterator[tuple[Family, str]]:
        """Every (family, task) the catalog lists, installed or not."""
        for fam in self._families.values():
            for task in fam.tasks:
                yield fam, task

    def convertible(self) -> Iterator[Convertible]:
        """Every step and every installed family estimator, with how it converts."""
        for step in self._steps.values():
            yield Convertible(import_class(step.cls), step.kind, step.converter, step.options,
                              step.note)
        for fam, task in self.cases():
            if fam.available:
                yield Convertible(fam.estimator_class(task), TASK_KINDS[task], fam.converter,
                                  fam.conversion_options(task), fam.note)


# -- the table ---------------------------------------------------------------

_SK = "sklearn"
_C, _R, _A = ("classification",), ("regression",), ("anomaly",)
_CR = ("classification", "regression")
_TREES = {"n_estimators": 5, "max_depth": 4}
CATALOG = Catalog()

for _family in (
    Family(
        "logistic_regression",
        {"classification": f"{_SK}.linear_model:LogisticRegression"},
        {"classification": {"max_iter": 1000}},
    ),
    Family("linear_regression", {"regression": f"{_SK}.linear_model:LinearRegression"}),
    Family("ridge", {"regression": f"{_SK}.linear_model:Ridge"}),
    Family("lasso", {"regression": f"{_SK}.linear_model:Lasso"}, {"regression": {"max_iter": 10000}}),
    Family("elastic_net", {"regression": f"{_SK}.linear_model:ElasticNet"},
           {"regression": {"max_iter": 10000}}),
    Family(
        "sgd",
        {"classification": f"{_SK}.linear_model:SGDClassifier",
         "regression": f"{_SK}.linear_model:SGDRegressor"},
        {"classification": {"loss": "log_loss"}},
        converter=SKL2ONNX,
        rules=(ParamRule("loss", ("log_loss", "modified_huber"),
                         "only these losses have predict_proba, which the bundle's "
                         "probabilities output needs", _C, refused=("hinge", "perceptron")),),
        note="classification losses limited to those with predict_proba",
    ),
    Family(
        "decision_tree",
        {"classification": f"{_SK}.tree:DecisionTreeClassifier",
         "regression": f"{_SK}.tree:DecisionTreeRegressor"},
        quick={"max_depth": 4},
    ),
    Family(
        "random_forest",
        {"classification": f"{_SK}.ensemble:RandomForestClassifier",
         "regression": f"{_SK}.ensemble:RandomForestRegressor"},
        {"classification": {"n_estimators": 100}, "regression": {"n_estimators": 100}},
        quick=_TREES,
    ),
    Family(
        "extra_trees",
        {"classification": f"{_SK}.ensemble:ExtraTreesClassifier",
         "regression": f"{_SK}.ensemble:ExtraTreesRegressor"},
        {"classification": {"n_estimators": 100}, "regression": {"n_estimators": 100}},
        quick=_TREES,
    ),
    Family(
        "hist_gradient_boosting",
        {"classification": f"{_SK}.ensemble:HistGradientBoostingClassifier",
         "regression": f"{_SK}.ensemble:HistGradientBoostingRegressor"},
        rules=(ParamRule("loss", ("squared_error", "absolute_error"),
                         "skl2onnx leaves out the inverse link (exp) of this loss",
                         _R, refused=("poisson", "gamma")),),
        quick={"max_iter": 10},
        note="needs protobuf<7; thresholds widened by 1e-6 relative",
    ),
    Family(
        "svm",
        {"classification": f"{_SK}.svm:SVC", "regression": f"{_SK}.svm:SVR"},
        fixed={"probability": "svm classifiers get probabilities from CalibratedClassifierCV "
                              "(SVC(probability=True) is deprecated in scikit-learn 1.9)"},
        calibrated={"classification": {"cv": 3, "method": "sigmoid", "ensemble": False}},
        note="classifier: CalibratedClassifierCV(SVC, cv=3, sigmoid, ensemble=False)",
    ),
    Family(
        "linear_svm",
        {"classification": f"{_SK}.svm:LinearSVC", "regression": f"{_SK}.svm:LinearSVR"},
        {"classification": {"max_iter": 5000}, "regression": {"max_iter": 5000}},
        calibrated={"classification": {"cv": 3, "method": "sigmoid"}},
        note="classifier wrapped in CalibratedClassifierCV(cv=3, sigmoid) for probabilities",
    ),
    Family(
        "knn",
        {"classification": f"{_SK}.neighbors:KNeighborsClassifier",
         "regression": f"{_SK}.neighbors:KNeighborsRegressor"},
        rules=(
            ParamRule("metric", ("minkowski", "euclidean", "manhattan", "cosine"),
                      "skl2onnx implements only these distances", _CR, refused=("chebyshev",)),
            ParamRule("weights", ("uniform",),
                      "skl2onnx's distance weighting disagrees with scikit-learn", _CR,
                      refused=("distance",)),
        ),
    ),
    Family("naive_bayes", {"classification": f"{_SK}.naive_bayes:GaussianNB"}),
    Family(
        "mlp",
        {"classification": f"{_SK}.neural_network:MLPClassifier",
         "regression": f"{_SK}.neural_network:MLPRegressor"},
        {"classification": {"early_stopping": True, "max_iter": 500},
         "regression": {"early_stopping": True, "max_iter": 500}},
        quick={"hidden_layer_sizes": (8,), "max_iter": 50, "early_stopping": False},
    ),
    Family(
        "isolation_forest",
        {"anomaly": f"{_SK}.ensemble:IsolationForest"},
        {"anomaly": {"n_estimators": 100}},
        converter=EDGEML,
        quick={"n_estimators": 10},
        note="one TreeEnsembleRegressor node (edgeml.convert.isolation_forest)",
    ),
    Family(
        "xgboost",
        {"regression": "xgboost:XGBRegressor"},
        {"regression": {"n_estimators": 100}},
        converter=ONNXMLTOOLS,
        requires="xgboost",
        quick={"n_estimators": 5},
        note="regression only: XGBClassifier needs integer labels, edgeml keeps string classes",
    ),
    Family(
        "lightgbm",
        {"classification": "lightgbm:LGBMClassifier", "regression": "lightgbm:LGBMRegressor"},
        {"classification": {"n_estimators": 100, "verbose": -1},
         "regression": {"n_estimators": 100, "verbose": -1}},
        converter=ONNXMLTOOLS,
        requires="lightgbm",
        quick={"n_estimators": 5},
    ),
):
    CATALOG.add_family(_family)

for _step in (
    Step("pipeline", f"{_SK}.pipeline:Pipeline", "container"),
    Step("column_transformer", f"{_SK}.compose:ColumnTransformer", "container"),
    Step("simple_imputer", f"{_SK}.impute:SimpleImputer"),
    Step("outlier_clipper", "edgeml.train.transformers:OutlierClipper", converter=EDGEML,
         note="Min(Max(x, lower), upper), NaN kept (edgeml.convert.converters)"),
    Step("standard_scaler", f"{_SK}.preprocessing:StandardScaler"),
    Step("minmax_scaler", f"{_SK}.preprocessing:MinMaxScaler"),
    Step("robust_scaler", f"{_SK}.preprocessing:RobustScaler"),
    Step("maxabs_scaler", f"{_SK}.preprocessing:MaxAbsScaler"),
    Step("onehot_encoder", f"{_SK}.preprocessing:OneHotEncoder"),
    Step("ordinal_encoder", f"{_SK}.preprocessing:OrdinalEncoder"),
    Step("tfidf_vectorizer", f"{_SK}.feature_extraction.text:TfidfVectorizer",
         note="word analyzer, sublinear_tf=False, ASCII token patterns (edgeml.convert.tokens)"),
    Step("polynomial_features", f"{_SK}.preprocessing:PolynomialFeatures"),
    Step("variance_threshold", f"{_SK}.feature_selection:VarianceThreshold"),
    Step("select_k_best", f"{_SK}.feature_selection:SelectKBest"),
    Step("select_from_model", f"{_SK}.feature_selection:SelectFromModel",
         note="only get_support() is converted"),
    Step("pca", f"{_SK}.decomposition:PCA"),
    Step("calibrated_classifier_cv", f"{_SK}.calibration:CalibratedClassifierCV", "classifier",
         options=CLASSIFIER_OPTIONS, note="gives SVC/LinearSVC probabilities"),
):
    CATALOG.add_step(_step)

FAMILIES: Mapping[str, Family] = CATALOG.families
STEPS: Mapping[str, Step] = CATALOG.steps
