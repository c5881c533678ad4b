"""THE registry of pipeline steps and model families that edgeml can train *and* convert.

Anything a recipe can name lives here, together with the scikit-learn class per task,
the default parameters, and the library that converts it to ONNX ("skl2onnx",
"onnxmltools" for xgboost/lightgbm, "edgeml" for edgeml's own OutlierClipper). Conversion and packaging read the same table
(:func:`converter_library`), so a pipeline built from a valid recipe is convertible.

Decisions documented here:

- ``linear_svm`` for classification is ``CalibratedClassifierCV(LinearSVC(...), cv=3,
  method="sigmoid")`` so that it has ``predict_proba`` like every other classifier (the
  bundle contract requires a ``probabilities`` output). Recipe params go to the inner
  ``LinearSVC`` (searched as ``model__estimator__<param>``).
- ``svm`` classifiers always use ``probability=True`` (the recipe may not change it).
- ``sgd`` classifiers default to ``loss="log_loss"`` and accept only losses with
  ``predict_proba`` (``log_loss``, ``modified_huber``).
- ``ridge``, ``lasso``, ``elastic_net``, ``linear_regression`` are regression-only;
  ``naive_bayes`` (GaussianNB) is classification-only; ``isolation_forest`` is the
  anomaly family.
- ``xgboost`` is regression-only (XGBClassifier needs integer-encoded labels and edgeml
  keeps class labels as strings); ``xgboost`` and ``lightgbm`` are offered only when the
  package is installed.
- Every family with a ``random_state`` gets the recipe's ``split.seed`` unless the
  recipe's params set it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeml.errors import RecipeError, UnsupportedStepError

__all__ = [
    "FAMILIES",
    "STEPS",
    "Family",
    "Step",
    "converter_library",
    "get_family",
    "supported_classes",
    "supported_families",
    "validate_candidates",
]

SKL2ONNX = "skl2onnx"
ONNXMLTOOLS = "onnxmltools"
EDGEML = "edgeml"  # edgeml's own converter, registered with skl2onnx by edgeml.convert


def _import(path: str) -> type:
    module, _, name = path.partition(":")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


@dataclass(frozen=True)
class Step:
    """A preprocessing / feature step edgeml may put in a pipeline."""

    name: str
    cls: str  # "module:Class"
    converter: str = SKL2ONNX
    note: str = ""


@dataclass(frozen=True)
class Family:
    """A model family: the estimator class per task and its defaults."""

    name: str
    estimators: Mapping[str, str]  # task -> "module:Class"
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # task -> params
    converter: str = SKL2ONNX
    requires: str | None = None  # importable module needed (optional dependency)
    fixed: tuple[str, ...] = ()  # params a recipe may not set
    allowed: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # param -> values
    calibrated: tuple[str, ...] = ()  # tasks where the estimator is wrapped for predict_proba
    note: str = ""

    @property
    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.estimators)

    def estimator_class(self, task: str) -> type:
        """The class whose parameters a recipe sets (the inner one when wrapped)."""
        return _import(self.estimators[task])

    def param_prefix(self, task: str) -> str:
        """Prefix of this family's params inside the edgeml pipeline."""
        return "model__estimator__" if task in self.calibrated else "model__"

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

            return CalibratedClassifierCV(est, cv=3, method="sigmoid")
        return est


_SK = "sklearn"
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "logistic_regression",
            {"classification": f"{_SK}.linear_model:LogisticRegression"},
            {"classification": {"max_iter": 1000}},
        ),
        Family("linear_regression", {"regression": f"{_SK}.linear_model:LinearRegression"}),
        Family("ridge", {"regression": f"{_SK}.linear_model:Ridge"}),
        Family("lasso", {"regression": f"{_SK}.linear_model:Lasso"}, {"regression": {"max_iter": 10000}}),
        Family(
            "elastic_net",
            {"regression": f"{_SK}.linear_model:ElasticNet"},
            {"regression": {"max_iter": 10000}},
        ),
        Family(
            "sgd",
            {
                "classification": f"{_SK}.linear_model:SGDClassifier",
                "regression": f"{_SK}.linear_model:SGDRegressor",
            },
            {"classification": {"loss": "log_loss"}},
            allowed={"loss": ("log_loss", "modified_huber")},
            note="classification losses limited to those with predict_proba",
        ),
        Family(
            "decision_tree",
            {
                "classification": f"{_SK}.tree:DecisionTreeClassifier",
                "regression": f"{_SK}.tree:DecisionTreeRegressor",
            },
        ),
        Family(
            "random_forest",
            {
                "classification": f"{_SK}.ensemble:RandomForestClassifier",
                "regression": f"{_SK}.ensemble:RandomForestRegressor",
            },
            {"classification": {"n_estimators": 100}, "regression": {"n_estimators": 100}},
        ),
        Family(
            "extra_trees",
            {
                "classification": f"{_SK}.ensemble:ExtraTreesClassifier",
                "regression": f"{_SK}.ensemble:ExtraTreesRegressor",
            },
            {"classification": {"n_estimators": 100}, "regression": {"n_estimators": 100}},
        ),
        Family(
            "hist_gradient_boosting",
            {
                "classification": f"{_SK}.ensemble:HistGradientBoostingClassifier",
                "regression": f"{_SK}.ensemble:HistGradientBoostingRegressor",
            },
        ),
        Family(
            "svm",
            {"classification": f"{_SK}.svm:SVC", "regression": f"{_SK}.svm:SVR"},
            {"classification": {"probability": True}},
            fixed=("probability",),
        ),
        Family(
            "linear_svm",
            {"classification": f"{_SK}.svm:LinearSVC", "regression": f"{_SK}.svm:LinearSVR"},
            {"classification": {"max_iter": 5000}, "regression": {"max_iter": 5000}},
            calibrated=("classification",),
            note="classifier wrapped in CalibratedClassifierCV(cv=3, sigmoid) for probabilities",
        ),
        Family(
            "knn",
            {
                "classification": f"{_SK}.neighbors:KNeighborsClassifier",
                "regression": f"{_SK}.neighbors:KNeighborsRegressor",
            },
        ),
        Family("naive_bayes", {"classification": f"{_SK}.naive_bayes:GaussianNB"}),
        Family(
            "mlp",
            {
                "classification": f"{_SK}.neural_network:MLPClassifier",
                "regression": f"{_SK}.neural_network:MLPRegressor",
            },
            {
                "classification": {"early_stopping": True, "max_iter": 500},
                "regression": {"early_stopping": True, "max_iter": 500},
            },
        ),
        Family(
            "isolation_forest",
            {"anomaly": f"{_SK}.ensemble:IsolationForest"},
            {"anomaly": {"n_estimators": 100}},
        ),
        Family(
            "xgboost",
            {"regression": "xgboost:XGBRegressor"},
            {"regression": {"n_estimators": 100}},
            converter=ONNXMLTOOLS,
            requires="xgboost",
            note="regression only: XGBClassifier needs integer labels, edgeml keeps string classes",
        ),
        Family(
            "lightgbm",
            {"classification": "lightgbm:LGBMClassifier", "regression": "lightgbm:LGBMRegressor"},
            {
                "classification": {"n_estimators": 100, "verbose": -1},
                "regression": {"n_estimators": 100, "verbose": -1},
            },
            converter=ONNXMLTOOLS,
            requires="lightgbm",
        ),
    )
}

STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("pipeline", f"{_SK}.pipeline:Pipeline"),
        Step("column_transformer", f"{_SK}.compose:ColumnTransformer"),
        Step("simple_imputer", f"{_SK}.impute:SimpleImputer"),
        Step("outlier_clipper", "edgeml.train.transformers:OutlierClipper", EDGEML,
             note="converter in edgeml.convert.converters (registered with skl2onnx)"),
        Step("standard_scaler", f"{_SK}.preprocessing:StandardScaler"),
        Step("minmax_scaler", f"{_SK}.preprocessing:MinMaxScaler"),
        Step("robust_scaler", f"{_SK}.preprocessing:RobustScaler"),
        Step("onehot_encoder", f"{_SK}.preprocessing:OneHotEncoder"),
        Step("ordinal_encoder", f"{_SK}.preprocessing:OrdinalEncoder"),
        Step("tfidf_vectorizer", f"{_SK}.feature_extraction.text:TfidfVectorizer"),
        Step("polynomial_features", f"{_SK}.preprocessing:PolynomialFeatures"),
        Step("variance_threshold", f"{_SK}.feature_selection:VarianceThreshold"),
        Step("select_k_best", f"{_SK}.feature_selection:SelectKBest"),
        Step("select_from_model", f"{_SK}.feature_selection:SelectFromModel"),
        Step("pca", f"{_SK}.decomposition:PCA"),
        Step("calibrated_classifier_cv", f"{_SK}.calibration:CalibratedClassifierCV"),
    )
}


def supported_families(task: str | None = None) -> list[str]:
    """Names of the families usable here (installed), optionally only those for ``task``."""
    return [
        name
        for name, fam in FAMILIES.items()
        if fam.available and (task is None or task in fam.estimators)
    ]


def get_family(
    name: str, task: str, *, path: Path | str = "<recipe>", where: str = "family"
) -> Family:
    """The family ``name`` for ``task``; a RecipeError listing the supported ones otherwise."""
    fam = FAMILIES.get(name)
    supported = ", ".join(supported_families(task))
    if fam is None:
        raise RecipeError(path, f"unknown family {name!r}; supported for {task}: {supported}", where)
    if not fam.available:
        raise RecipeError(
            path,
            f"family {name!r} needs the {fam.requires!r} package (pip install {fam.requires}); "
            f"supported for {task}: {supported}",
            where,
        )
    if task not in fam.estimators:
        raise RecipeError(
            path,
            f"family {name!r} does not support task {task} (only {', '.join(fam.tasks)}); "
            f"supported for {task}: {supported}",
            where,
        )
    return fam


def _check_value(cls: type, base: Mapping[str, Any], param: str, value: Any) -> str | None:
    """Let scikit-learn's own parameter validation judge one value; the message or None."""
    try:
        est = cls(**{**base, param: value})
        validate = getattr(est, "_validate_params", None)
        if validate is not None:
            validate()
    except (TypeError, ValueError) as exc:
        return str(exc).splitlines()[0]
    return None


def validate_candidates(recipe: Any) -> None:
    """Check every candidate's family and params for ``recipe.task``; RecipeError otherwise."""
    path = recipe.path or "<recipe>"
    for i, cand in enumerate(recipe.candidates):
        fam = get_family(cand.family, recipe.task, path=path, where=f"candidates[{i}].family")
        cls = fam.estimator_class(recipe.task)
        base = dict(fam.defaults.get(recipe.task, {}))
        known = sorted(cls().get_params())
        for param, values in cand.params.items():
            where = f"candidates[{i}].params.{param}"
            if param not in known:
                raise RecipeError(
                    path,
                    f"unknown parameter for {cand.family} ({cls.__name__}); valid: {', '.join(known)}",
                    where,
                )
            if param in fam.fixed:
                raise RecipeError(
                    path, f"{cand.family} fixes {param}={base.get(param)!r}; remove it", where
                )
            if not values:
                raise RecipeError(path, "needs at least one value", where)
            for value in values:
                allowed = fam.allowed.get(param) if recipe.task == "classification" else None
                if allowed is not None and value not in allowed:
                    raise RecipeError(
                        path,
                        f"{value!r} not allowed for {cand.family}; use one of "
                        + ", ".join(map(str, allowed)),
                        where,
                    )
                problem = _check_value(cls, base, param, value)
                if problem:
                    raise RecipeError(path, f"invalid value {value!r}: {problem}", where)


def supported_classes() -> dict[type, str]:
    """``{class: converter library}`` for every step and every available family estimator."""
    out: dict[type, str] = {}
    for step in STEPS.values():
        out[_import(step.cls)] = step.converter
    for fam in FAMILIES.values():
        if fam.available:
            for cls_path in fam.estimators.values():
                out[_import(cls_path)] = fam.converter
    return out


def converter_library(obj: object) -> str:
    """The ONNX converter library for a pipeline step or estimator (instance or class).

    Exact classes only (a subclass may change behaviour the converter relies on).
    Raises UnsupportedStepError listing the supported classes.
    """
    cls = obj if isinstance(obj, type) else type(obj)
    table = supported_classes()
    lib = table.get(cls)
    if lib is None:
        names = ", ".join(sorted(c.__name__ for c in table))
        raise UnsupportedStepError(f"no ONNX converter for {cls.__name__}; supported: {names}")
    return lib
