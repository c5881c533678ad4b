"""Build the unfitted scikit-learn Pipeline for a recipe (the "Fitted pipeline shape" contract).

::

    Pipeline([
      ("preprocess", ColumnTransformer([
          ("numeric", Pipeline([impute, (clip), scale]), [numeric columns]),
          ("categorical", Pipeline([impute, encode]), [categorical columns]),
          ("text:<col>", TfidfVectorizer(...), "<col>"),        # one per text column
      ], sparse_threshold=0)),
      ("features", Pipeline([(polynomial), (select), (pca)])),   # only if the recipe asks
      ("model", estimator),
    ])

Only steps from :mod:`edgeml.train.steps` are used, so the result is convertible to ONNX.
Inputs follow the raw-feature-frame contract: numeric float64 with NaN, categorical and
text ``str`` with ``""`` for missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.feature_selection import (
    SelectFromModel,
    SelectKBest,
    VarianceThreshold,
    f_classif,
    f_regression,
    mutual_info_classif,
    mutual_info_regression,
)
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    PolynomialFeatures,
    RobustScaler,
    StandardScaler,
)

from edgeml.errors import DataError, RecipeError
from edgeml.train.recipe import Recipe, TextSpec
from edgeml.train.transformers import OutlierClipper

__all__ = ["build_pipeline", "text_token_pattern", "validate_features"]

KINDS = ("numeric", "categorical", "text")


def text_token_pattern(spec: TextSpec) -> str:
    """The TfidfVectorizer ``token_pattern`` realising the recipe's text cleaning options.

    Tokens are maximal runs of 2+ ASCII letters and digits (``strip_digits``: letters
    only, so digits split words); with ``strip_punctuation: false`` each ASCII
    punctuation character is a token too. The classes are ASCII on purpose: ONNX's
    Tokenizer (re2) and Python's ``re`` disagree on what ``\\w`` and ``\\b`` match for
    non-ASCII text, and ASCII classes keep scikit-learn and ONNX token-for-token equal.
    Non-ASCII letters therefore split words ("café" -> "caf").
    """
    word = "[A-Za-z]{2,}" if spec.strip_digits else "[A-Za-z0-9]{2,}"
    return word if spec.strip_punctuation else word + r"|[!-/:-@\[-`{-~]"


def validate_features(recipe: Recipe) -> None:
    """Recipe checks for the feature stage that pydantic cannot express."""
    path = recipe.path or "<recipe>"
    if recipe.preprocess.text.sublinear_tf:
        raise RecipeError(
            path,
            "true does not convert to ONNX with parity (skl2onnx computes log(1 + tf) where "
            "scikit-learn computes 1 + log(tf)); use false",
            "preprocess.text.sublinear_tf",
        )
    sel = recipe.features.select
    if sel is not None:
        if sel.method.startswith("kbest") and sel.k is None:
            raise RecipeError(path, f"method {sel.method} needs k", "features.select.k")
        if sel.method in ("kbest_anova", "kbest_mutual_info") and recipe.task == "anomaly":
            raise RecipeError(
                path, f"{sel.method} needs a target; not available for anomaly", "features.select"
            )
        if sel.method == "model" and recipe.task == "anomaly":
            raise RecipeError(path, "model selection needs a target", "features.select")


def _scaler(name: str) -> Any:
    return {
        "standard": StandardScaler(),
        "minmax": MinMaxScaler(),
        "robust": RobustScaler(),
        "none": "passthrough",
    }[name]


def _feature_stage(recipe: Recipe) -> Pipeline | None:
    spec, seed, classify = recipe.features, recipe.split.seed, recipe.task == "classification"
    steps: list[tuple[str, Any]] = []
    if spec.polynomial is not None:
        steps.append(
            (
                "polynomial",
                PolynomialFeatures(
                    degree=spec.polynomial.degree,
                    interaction_only=spec.polynomial.interaction_only,
                    include_bias=False,
                ),
            )
        )
    sel = spec.select
    if sel is not None:
        if sel.method == "variance":
            steps.append(("select", VarianceThreshold(threshold=sel.threshold or 0.0)))
        elif sel.method == "kbest_anova":
            steps.append(("select", SelectKBest(f_classif if classify else f_regression, k=sel.k)))
        elif sel.method == "kbest_mutual_info":
            mi = mutual_info_classif if classify else mutual_info_regression
            steps.append(("select", SelectKBest(partial(mi, random_state=seed), k=sel.k)))
        else:
            forest = ExtraTreesClassifier if classify else ExtraTreesRegressor
            steps.append(
                (
                    "select",
                    SelectFromModel(
                        forest(n_estimators=50, random_state=seed),
                        threshold=sel.threshold,
                    ),
                )
            )
    if spec.pca is not None:
        steps.append(("pca", PCA(n_components=spec.pca.n_components, random_state=seed)))
    return Pipeline(steps) if steps else None


def build_pipeline(recipe: Recipe, kinds: Mapping[str, str], estimator: Any) -> Pipeline:
    """The unfitted pipeline for ``recipe`` over features ``kinds`` (name -> kind, in order)."""
    bad = {name: kind for name, kind in kinds.items() if kind not in KINDS}
    if bad:
        raise DataError(f"unknown column kinds {bad}; expected one of {', '.join(KINDS)}")
    if not kinds:
        raise DataError("no feature columns left (after data.drop and the target)")
    pre = recipe.preprocess
    numeric = [c for c, k in kinds.items() if k == "numeric"]
    categorical = [c for c, k in kinds.items() if k == "categorical"]
    text = [c for c, k in kinds.items() if k == "text"]

    transformers: list[tuple[str, Any, Any]] = []
    if numeric:
        num_steps: list[tuple[str, Any]] = [
            ("impute", SimpleImputer(strategy=pre.numeric.impute, fill_value=pre.numeric.fill_value))
        ]
        if pre.numeric.clip_outliers is not None:
            num_steps.append(("clip", OutlierClipper(k=pre.numeric.clip_outliers)))
        num_steps.append(("scale", _scaler(pre.numeric.scale)))
        transformers.append(("numeric", Pipeline(num_steps), numeric))
    if categorical:
        cat = pre.categorical
        encoder: Any = (
            OneHotEncoder(handle_unknown="ignore", sparse_output=False)
            if cat.encode == "onehot"
            else OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
        )
        imputer = SimpleImputer(missing_values="", strategy=cat.impute, fill_value=cat.fill_value)
        transformers.append(
            ("categorical", Pipeline([("impute", imputer), ("encode", encoder)]), categorical)
        )
    for col in text:
        tx = pre.text
        vec = TfidfVectorizer(
            lowercase=tx.lowercase,
            token_pattern=text_token_pattern(tx),
            ngram_range=tx.ngram_range,
            max_features=tx.max_features,
            min_df=tx.min_df,
            sublinear_tf=tx.sublinear_tf,
        )
        transformers.append((f"text:{col}", vec, col))

    steps: list[tuple[str, Any]] = [
        ("preprocess", ColumnTransformer(transformers, sparse_threshold=0)),
    ]
    features = _feature_stage(recipe)
    if features is not None:
        steps.append(("features", features))
    steps.append(("model", estimator))
    return Pipeline(steps)
