"""Converting whole pipelines of the contract's shape: every family, every stage, with parity.

Each case fits a tiny pipeline by hand (numeric with NaN, categorical with "" missing and an
unseen category at predict time, text with punctuation/digits/non-ASCII), converts it with
``to_onnx``, runs onnxruntime and compares with scikit-learn with explicit tolerances.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn import (
    decomposition,
    ensemble,
    feature_selection,
    linear_model,
    naive_bayes,
    svm,
)
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    PolynomialFeatures,
    RobustScaler,
    StandardScaler,
)

from edgeml.bundle.manifest import OutputSpec
from edgeml.catalog import CATALOG
from edgeml.convert import (
    REGISTRY,
    TOKEN_PATTERNS,
    ConverterRegistry,
    StepConverter,
    check_parity,
    check_token_pattern,
    ir_version_of,
    min_onnxruntime,
    opset_of,
    register_outlier_clipper,
    runtime_limits,
    to_onnx,
    token_pattern,
)
from edgeml.convert.export import _converter_errors
from edgeml.errors import ConversionError, PackagingError, UnsupportedStepError
from edgeml.train.transformers import OutlierClipper

PROB_ATOL = 1e-4
REL_TOL = 1e-4

WORDS = ["alpha", "Beta", "gamma", "ERROR", "warn", "x1", "42", "ok!", "fail,", "don't", "café",
         "CAFÉ", "a", "b2b", "e-mail", "naïve"]
FEATURES = [
    {"name": "temp", "kind": "numeric"},
    {"name": "load", "kind": "numeric"},
    {"name": "rpm", "kind": "numeric"},
    {"name": "color", "kind": "categorical"},
    {"name": "note", "kind": "text"},
]




def raw_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    notes = [" ".join(rng.choice(WORDS, rng.integers(0, 6))) + str(rng.choice([".", "!", " 123", ""]))
             for _ in range(n)]
    X = pd.DataFrame({
        "temp": rng.normal(20, 5, n),
        "load": rng.normal(0, 100, n),
        "rpm": np.round(rng.uniform(0, 3000, n), -1),  # a quantized sensor: many repeated values
        "color": pd.Series(rng.choice(["red", "green", "blue", ""], n), dtype=object),
        "note": pd.Series(notes, dtype=object),
    })
    X.loc[rng.random(n) < 0.1, "temp"] = np.nan
    X.loc[rng.random(n) < 0.1, "load"] = np.nan
    return X


def target(X: pd.DataFrame, task: str) -> np.ndarray:
    s = (X["temp"].fillna(20) / 5 + X["load"].fillna(0) / 50 + (X["color"] == "red") * 2
         + X["note"].str.contains("ERROR") * 1.5)
    if task == "regression":
        return (s * 10 + X["rpm"] / 100).to_numpy()
    q = np.quantile(s, [0.33, 0.66])
    return np.where(s < q[0], "low", np.where(s < q[1], "mid", "high"))


TRAIN, TEST = raw_frame(240, 0), raw_frame(120, 1)
TEST.loc[TEST.index[0], "color"] = "purple"  # unseen category
TEST.loc[TEST.index[1], "note"] = ""  # missing text
TEST.loc[TEST.index[2], "note"] = "!!! 123 ?"  # no token at all
TEST.loc[TEST.index[3], "note"] = "CAFÉ café Ünïcode ERROR-42 tab\there"


def build(model, *, features=None, encode="onehot", scale="standard", clip=False, text=True,
          punct=True, digits=True, ngram=(1, 1), text_opts=None) -> Pipeline:
    scalers = {"standard": StandardScaler(), "minmax": MinMaxScaler(), "robust": RobustScaler(),
               "none": "passthrough"}
    numeric = [("impute", SimpleImputer(strategy="median"))]
    if clip:
        numeric.append(("clip", OutlierClipper(k=1.5)))
    numeric.append(("scale", scalers[scale]))
    encoder = (OneHotEncoder(handle_unknown="ignore") if encode == "onehot" else
               OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1))
    transformers = [
        ("numeric", Pipeline(numeric), ["temp", "load", "rpm"]),
        ("categorical", Pipeline([("impute", SimpleImputer(missing_values="", strategy="most_frequent")),
                                  ("encode", encoder)]), ["color"]),
    ]
    if text:
        vec = TfidfVectorizer(lowercase=True, ngram_range=ngram, **(text_opts or {}),
                              token_pattern=token_pattern(strip_punctuation=punct, strip_digits=digits))
        transformers.append(("text:note", vec, "note"))
    steps = [("preprocess", ColumnTransformer(transformers, sparse_threshold=0))]
    if features is not None:
        steps.append(("features", features))
    steps.append(("model", model))
    return Pipeline(steps)


def fit(pipe: Pipeline, task: str) -> Pipeline:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return pipe.fit(TRAIN, None if task == "anomaly" else target(TRAIN, task))


def convert_and_check(pipe: Pipeline, task: str, **kw):
    result = to_onnx(pipe, FEATURES, task=task, **kw)
    report = check_parity(pipe, result.to_bytes(), TEST, task=task, prob_atol=PROB_ATOL, rel_tol=REL_TOL)
    assert report.passed and report.rows == len(TEST)
    return result, report


C, R, A = "classification", "regression", "anomaly"
FLOAT32_TIES: dict[str, int] = {}
FAMILIES = [  # every installed family x task of the catalog, inside the full-shape pipeline
    (task, fam.name, lambda fam=fam, task=task: fam.make(task, 0, fam.quick))
    for fam, task in CATALOG.cases() if fam.available
] + [
    (C, "svm_probability", lambda: svm.SVC(kernel="poly", degree=2, probability=True, random_state=0)),
    (C, "sgd_modified_huber", lambda: linear_model.SGDClassifier(loss="modified_huber", random_state=0)),
]


@pytest.mark.parametrize(("task", "family", "make"), FAMILIES, ids=[f"{t}-{f}" for t, f, _m in FAMILIES])
def test_family_converts_with_parity(task: str, family: str, make) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # SVC(probability=True) is deprecated in 1.9
        pipe = fit(build(make()), task)
    result, report = convert_and_check(pipe, task)
    FLOAT32_TIES[f"{task}-{family}"] = report.float32_ties

    sess = ort.InferenceSession(result.to_bytes(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [f["name"] for f in FEATURES]
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)"] * 3 + ["tensor(string)"] * 2
    assert all(i.shape[1] == 1 for i in sess.get_inputs())
    if task == C:
        assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]
        assert result.output_spec == OutputSpec(label="label", probabilities="probabilities",
                                                classes=["high", "low", "mid"], label_dtype="string")
        assert report.max_abs_prob_diff <= PROB_ATOL
        assert report.label_agreement >= 1 - report.float32_ties / report.rows
    elif task == R:
        assert [o.name for o in sess.get_outputs()] == ["prediction"]
        assert result.output_spec == OutputSpec(prediction="prediction")
        assert report.max_rel_error <= REL_TOL
    else:
        assert [o.name for o in sess.get_outputs()] == ["label", "scores"]
        assert result.output_spec == OutputSpec(label="label", score="scores", label_dtype="int64")
        assert report.label_agreement >= 1 - report.float32_ties / report.rows


STAGES = [
    ("polynomial", {"features": PolynomialFeatures(degree=2), "text": False}),
    ("select_kbest", {"features": feature_selection.SelectKBest(feature_selection.f_classif, k=6)}),
    ("select_mutual_info", {"features": feature_selection.SelectKBest(
        lambda X, y: feature_selection.mutual_info_classif(X, y, random_state=0), k=5)}),
    ("variance", {"features": feature_selection.VarianceThreshold(0.01)}),
    ("select_from_model", {"features": feature_selection.SelectFromModel(
        linear_model.LogisticRegression(max_iter=500))}),
    ("pca", {"features": decomposition.PCA(n_components=4)}),
    ("poly_select_pca", {"text": False, "features": Pipeline([
        ("poly", PolynomialFeatures(degree=2, interaction_only=True)),
        ("variance", feature_selection.VarianceThreshold(0.0)),
        ("select", feature_selection.SelectKBest(feature_selection.f_classif, k=8)),
        ("pca", decomposition.PCA(n_components=3))])}),
    ("ordinal_minmax_clip", {"encode": "ordinal", "scale": "minmax", "clip": True}),
    ("robust_scaler", {"scale": "robust"}),
    ("no_scaler", {"scale": "none"}),
    ("text_bigrams_limited", {"ngram": (1, 2), "text_opts": {"max_features": 20, "min_df": 2}}),
    ("no_text", {"text": False}),
    ("features_passthrough", {"features": "passthrough"}),
]


@pytest.mark.parametrize(("name", "kw"), STAGES, ids=[s[0] for s in STAGES])
def test_stage_converts_with_parity(name: str, kw: dict) -> None:
    pipe = fit(build(linear_model.LogisticRegression(max_iter=1000), **kw), C)
    convert_and_check(pipe, C)


@pytest.mark.parametrize(("punct", "digits"), list(TOKEN_PATTERNS))
def test_text_cleaning_options_tokenize_identically(punct: bool, digits: bool) -> None:
    pipe = fit(build(linear_model.LogisticRegression(max_iter=1000), punct=punct, digits=digits,
                     ngram=(1, 2)), C)
    convert_and_check(pipe, C)
    vec = pipe.named_steps["preprocess"].named_transformers_["text:note"]
    tokens = set(vec.vocabulary_)
    assert any(any(ch.isdigit() for ch in t) for t in tokens) is not digits
    assert any(any(not ch.isalnum() for ch in t.replace(" ", "")) for t in tokens) is not punct


def test_outlier_clipper_converts_to_min_max() -> None:
    pipe = fit(build(linear_model.Ridge(), clip=True, text=False), R)
    result, _report = convert_and_check(pipe, R)
    ops = [n.op_type for n in result.model.graph.node]
    assert "Max" in ops and "Min" in ops
    assert REGISTRY.get(OutlierClipper).library == "edgeml"


class ClipperDouble(TransformerMixin, BaseEstimator):
    """Another class with learned ``lower_``/``upper_``: registering it is explicit and idempotent."""

    def fit(self, X, y=None):
        self.lower_, self.upper_ = np.nanmin(X, axis=0) + 1, np.nanmax(X, axis=0) - 1
        return self

    def transform(self, X):
        return np.clip(np.asarray(X, dtype=float), self.lower_, self.upper_)


def test_clipper_keeps_nan_before_the_imputer() -> None:
    entry = register_outlier_clipper(ClipperDouble)
    assert register_outlier_clipper(ClipperDouble) is entry
    numeric = Pipeline([("clip", ClipperDouble()), ("impute", SimpleImputer(strategy="median"))])
    pipe = Pipeline([("preprocess", ColumnTransformer([("numeric", numeric, ["temp", "load"])],
                                                      sparse_threshold=0)),
                     ("model", linear_model.Ridge())]).fit(TRAIN[["temp", "load"]], target(TRAIN, R))
    result = to_onnx(pipe, FEATURES[:2], task=R)
    # NaN must reach the imputer as NaN (not as a clip bound), or predictions differ.
    report = check_parity(pipe, result.to_bytes(), TEST[["temp", "load"]], task=R)
    assert report.passed and TEST["temp"].isna().any()


@pytest.mark.parametrize(("runtime", "opset", "ml_max", "ir"), [
    ("1.10", 15, 2, 8), ("1.16.3", 19, 3, 9), ("1.20", 21, 3, 10), ("1.26.0", 21, 3, 10),
])
def test_versions_follow_the_target_runtime(runtime: str, opset: int, ml_max: int, ir: int) -> None:
    pipe = fit(build(ensemble.IsolationForest(n_estimators=10, random_state=0)), A)
    result, _report = convert_and_check(pipe, A, runtime=runtime)
    assert result.opsets[""] == opset == opset_of(result.model)
    assert result.opsets["ai.onnx.ml"] <= ml_max
    assert result.ir_version == ir_version_of(result.to_bytes()) <= ir
    assert result.onnx_info().opset == opset
    assert int(min_onnxruntime(result.model).split(".")[1]) <= int(runtime.split(".")[1])


def test_target_opset_alone_picks_safe_ml_opset_and_ir() -> None:
    pipe = fit(build(linear_model.LogisticRegression(max_iter=500)), C)
    result, _report = convert_and_check(pipe, C, target_opset=17)
    assert result.opsets[""] == 17 and result.opsets.get("ai.onnx.ml", 0) <= 3 and result.ir_version <= 8


def test_target_opset_above_runtime_is_refused() -> None:
    pipe = fit(build(linear_model.LogisticRegression(max_iter=500)), C)
    with pytest.raises(ConversionError, match=r"target_opset 20 is above what onnxruntime 1\.12"):
        to_onnx(pipe, FEATURES, task=C, runtime="1.12", target_opset=20)


def test_runtime_limits_table() -> None:
    assert runtime_limits("1.16.3").opset == 19
    newer = runtime_limits("1.25.1")
    assert (newer.opset, newer.ir_version, newer.source) == (21, 10, "nearest-older")
    with pytest.raises(PackagingError, match=r"older than 1\.0"):
        runtime_limits("0.5")


def test_export_result_facts() -> None:
    pipe = fit(build(naive_bayes.GaussianNB()), C)
    result = to_onnx(pipe, FEATURES, task=C, classes=["high", "low", "mid"])
    facts = result.to_dict()
    assert facts["size_bytes"] == len(result.to_bytes()) > 0
    assert [i["name"] for i in facts["inputs"]] == ["temp", "load", "rpm", "color", "note"]
    assert [i["dtype"] for i in facts["inputs"]] == ["float32"] * 3 + ["string"] * 2
    assert facts["inputs"][0]["shape"][1] == 1
    assert [(o["name"], o["dtype"]) for o in facts["outputs"]] == [("label", "string"), ("probabilities", "float32")]
    assert facts["opsets"][""] == result.opset


def test_integer_classes_give_int64_labels() -> None:
    pipe = build(linear_model.LogisticRegression(max_iter=500))
    pipe.fit(TRAIN, (target(TRAIN, C) == "high").astype(int))
    result = to_onnx(pipe, FEATURES, task=C)
    assert result.output_spec.label_dtype == "int64" and result.output_spec.classes == ["0", "1"]
    assert check_parity(pipe, result.to_bytes(), TEST, task=C).passed


# -- refusals ------------------------------------------------------------------


def test_unsupported_step_lists_supported_ones() -> None:
    pipe = build(linear_model.LogisticRegression(max_iter=500), features=FunctionTransformer(np.tanh))
    pipe = fit(pipe, C)
    with pytest.raises(UnsupportedStepError) as err:
        to_onnx(pipe, FEATURES, task=C)
    msg = str(err.value)
    assert msg.startswith("features: FunctionTransformer has no ONNX converter")
    assert "HistGradientBoostingClassifier" in msg and "TfidfVectorizer" in msg and "OutlierClipper" in msg


def test_registration_refuses_silent_overwrite() -> None:
    with pytest.raises(ValueError, match="already registered"):
        REGISTRY.register(StepConverter(linear_model.Ridge, "regressor"))
    fresh = ConverterRegistry()
    fresh.register(StepConverter(linear_model.Ridge, "regressor"))
    fresh.register(StepConverter(linear_model.Ridge, "regressor", note="new"), replace=True)
    assert fresh.get(linear_model.Ridge).note == "new"


def test_classifier_without_probabilities_is_refused() -> None:
    pipe = fit(build(svm.LinearSVC()), C)
    with pytest.raises(ConversionError, match=r"LinearSVC has no predict_proba.*CalibratedClassifierCV"):
        to_onnx(pipe, FEATURES, task=C)


def test_sgd_modified_huber_labels_follow_the_decision_function() -> None:
    # Three classes: several probabilities clip to 1 on many rows; skl2onnx's argmax of the
    # probabilities would pick the first, scikit-learn's predict the largest decision.
    pipe = fit(build(linear_model.SGDClassifier(loss="modified_huber", random_state=0)), C)
    proba = pipe.predict_proba(TEST)
    ties = (proba == proba.max(axis=1, keepdims=True)).sum(axis=1) > 1
    assert ties.any(), "the data must have rows whose top probabilities tie"
    result, report = convert_and_check(pipe, C)
    sess = ort.InferenceSession(result.to_bytes(), providers=["CPUExecutionProvider"])
    inputs = [(i.name, i.type) for i in sess.get_inputs()]
    from edgeml.convert import frame_to_feeds

    label, probabilities = sess.run(None, frame_to_feeds(TEST, inputs))
    assert (label == pipe.predict(TEST)).all() and report.tied_rows == 0
    np.testing.assert_allclose(probabilities, proba, atol=PROB_ATOL)


def test_default_sklearn_token_pattern_is_refused_with_the_patterns_to_use() -> None:
    pipe = build(linear_model.LogisticRegression(max_iter=500))
    pipe.named_steps["preprocess"].transformers[2][1].set_params(token_pattern=r"(?u)\b\w\w+\b")
    pipe = fit(pipe, C)
    with pytest.raises(ConversionError, match=r"cannot be converted with parity.*\[A-Za-z\]\{2,\}"):
        to_onnx(pipe, FEATURES, task=C)
    assert check_token_pattern("[a-z]+") == "[a-z]+"


def test_sublinear_tf_is_refused() -> None:
    pipe = fit(build(linear_model.LogisticRegression(max_iter=500), text_opts={"sublinear_tf": True}), C)
    with pytest.raises(ConversionError, match=r"computes log\(1 \+ tf\).*use sublinear_tf=False"):
        to_onnx(pipe, FEATURES, task=C)


def test_task_and_model_must_match() -> None:
    pipe = fit(build(linear_model.Ridge()), R)
    with pytest.raises(ConversionError, match="is a regressor, but the task is classification"):
        to_onnx(pipe, FEATURES, task=C)


def test_features_must_match_the_fitted_columns() -> None:
    pipe = fit(build(linear_model.Ridge()), R)
    with pytest.raises(ConversionError, match="differ from the columns the pipeline was fitted on"):
        to_onnx(pipe, list(reversed(FEATURES)), task=R)
    with pytest.raises(ConversionError, match=r"features\[0\].kind: 'numbers'"):
        to_onnx(pipe, [{"name": "temp", "kind": "numbers"}], task=R)


def test_classes_must_match_the_model() -> None:
    pipe = fit(build(naive_bayes.GaussianNB()), C)
    with pytest.raises(ConversionError, match="differ from the model's classes_"):
        to_onnx(pipe, FEATURES, task=C, classes=["low", "mid", "high"])


def test_protobuf7_failure_explains_the_fix() -> None:
    with pytest.raises(ConversionError, match=r"protobuf 6: pip install 'protobuf>=4,<7'"), _converter_errors():
        raise TypeError("Field onnx.AttributeProto.ints: Expected an int, got a boolean")
