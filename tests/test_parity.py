"""The parity gate: a model that disagrees with scikit-learn is refused, naming the rows."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from edgeml.convert import check_parity, frame_to_feeds, to_onnx
from edgeml.errors import ConversionError, EdgeMLError, ParityError

FEATURES = [{"name": "size", "kind": "numeric"}, {"name": "shape", "kind": "categorical"}]


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({
        "size": rng.normal(10, 3, n),
        "shape": rng.choice(["round", "square", ""], n).astype(object),
    }, index=[f"r{i}" for i in range(n)])
    X.loc[X.index[rng.random(n) < 0.1], "size"] = np.nan
    return X


def build(model) -> Pipeline:
    return Pipeline([
        ("preprocess", ColumnTransformer([
            ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")),
                                  ("scale", StandardScaler())]), ["size"]),
            ("categorical", Pipeline([("impute", SimpleImputer(missing_values="", strategy="most_frequent")),
                                      ("encode", OneHotEncoder(handle_unknown="ignore"))]), ["shape"]),
        ], sparse_threshold=0)),
        ("model", model),
    ])


TRAIN, TEST = frame(200, 0), frame(60, 1)


def classifier() -> Pipeline:
    y = np.where(TRAIN["size"].fillna(10) + (TRAIN["shape"] == "round") * 3 > 11, "big", "small")
    return build(LogisticRegression()).fit(TRAIN, y)


def corrupt(model_bytes: bytes, op_types: tuple[str, ...], attr: str, delta: float) -> bytes:
    """Add ``delta`` to the first value of ``attr`` on the first node of one of ``op_types``."""
    model = onnx.load_model_from_string(model_bytes)
    node = next(n for n in model.graph.node if n.op_type in op_types)
    values = next(a for a in node.attribute if a.name == attr).floats
    values[0] += delta
    return model.SerializeToString()


def test_corrupted_coefficient_fails_naming_rows_and_dumps(tmp_path) -> None:
    pipe = classifier()
    good = to_onnx(pipe, FEATURES, task="classification").to_bytes()
    assert check_parity(pipe, good, TEST, task="classification").passed
    bad = corrupt(good, ("LinearClassifier",), "coefficients", 2.0)

    with pytest.raises(ParityError) as err:
        check_parity(pipe, bad, TEST, task="classification", dump_dir=tmp_path / "dump")
    msg = str(err.value)
    assert isinstance(err.value, EdgeMLError) and err.value.exit_code == 1
    assert msg.startswith("ONNX and scikit-learn disagree on ")
    assert "max |Δp|" in msg and "prob_atol 0.0001" in msg
    shown = [line for line in msg.splitlines() if line.startswith("  row ")]
    assert 1 <= len(shown) <= 5
    first = shown[0]
    assert first.startswith("  row 'r") and "size=" in first and "shape=" in first
    assert "sklearn_label=" in first and "onnx_label=" in first and "onnx_p[big]=" in first
    assert f"dump: {tmp_path / 'dump'}" in msg

    rows = pd.read_csv(tmp_path / "dump" / "rows.csv", index_col="index")
    assert rows.index[0] == first.split("'")[1]
    assert {"size", "shape", "sklearn_label", "onnx_label", "abs_prob_diff"} <= set(rows.columns)
    assert (rows["abs_prob_diff"] > 1e-4).all()
    assert (tmp_path / "dump" / "model.onnx").read_bytes() == bad
    assert not [p for p in (tmp_path / "dump").iterdir() if p.name.startswith(".")]


def test_failure_report_without_raising() -> None:
    pipe = classifier()
    bad = corrupt(to_onnx(pipe, FEATURES, task="classification").to_bytes(),
                  ("LinearClassifier",), "coefficients", 2.0)
    report = check_parity(pipe, bad, TEST, task="classification", raise_on_failure=False)
    assert not report.passed and report.failing_rows > 0
    assert report.first_failing[0].startswith("r") and report.max_abs_prob_diff > 1e-4
    assert json.loads(json.dumps(report.to_dict()))["passed"] is False


def test_passing_report_is_the_manifest_parity_field() -> None:
    pipe = classifier()
    report = check_parity(pipe, to_onnx(pipe, FEATURES, task="classification").to_bytes(), TEST,
                          task="classification", classes=["big", "small"])
    d = json.loads(json.dumps(report.to_dict()))
    assert d["passed"] is True and d["rows"] == len(TEST) and d["failing_rows"] == 0
    assert d["label_agreement"] == 1.0 and d["max_abs_prob_diff"] <= 1e-4
    assert d["tolerances"] == {"label_agreement": 1.0, "prob_atol": 1e-4}


def test_regression_corrupted_intercept_fails_on_relative_error() -> None:
    y = TRAIN["size"].fillna(10).to_numpy() * 100
    pipe = build(Ridge()).fit(TRAIN, y)
    good = to_onnx(pipe, FEATURES, task="regression").to_bytes()
    report = check_parity(pipe, good, TEST, task="regression")
    assert report.max_rel_error <= 1e-4 and report.tolerances == {"rel_tol": 1e-4}
    bad = corrupt(good, ("LinearRegressor",), "intercepts", 5.0)
    with pytest.raises(ParityError, match=r"disagree on 60 of 60 rows \(regression: max rel error"):
        check_parity(pipe, bad, TEST, task="regression")


def test_float32_ties_at_a_split_threshold_are_accepted_and_counted() -> None:
    # Test values exactly halfway between training values sit on the tree's thresholds:
    # float64 and float32 send them either way. That is a tie, not a conversion error.
    raw = np.arange(200) * 0.1 + 3.7
    X = pd.DataFrame({"x": raw})
    pipe = Pipeline([
        ("preprocess", ColumnTransformer([("numeric", Pipeline([
            ("impute", SimpleImputer()), ("scale", StandardScaler())]), ["x"])], sparse_threshold=0)),
        ("model", DecisionTreeClassifier(random_state=0)),
    ]).fit(X, np.where(np.arange(200) % 2 == 0, "even", "odd"))
    model = to_onnx(pipe, [{"name": "x", "kind": "numeric"}], task="classification").to_bytes()
    halfway = pd.DataFrame({"x": (raw[:-1] + raw[1:]) / 2})

    report = check_parity(pipe, model, halfway, task="classification")
    assert report.passed and report.float32_ties > 0
    assert report.label_agreement == pytest.approx(1 - report.float32_ties / report.rows)
    assert report.to_dict()["float32_ties"] == report.float32_ties

    # A real change of the tree is still caught: move one threshold far away.
    bad = onnx.load_model_from_string(model)
    node = next(n for n in bad.graph.node if n.op_type == "TreeEnsembleClassifier")
    values = next(a for a in node.attribute if a.name == "nodes_values").floats
    values[0] += 0.5
    with pytest.raises(ParityError):
        check_parity(pipe, bad.SerializeToString(), X, task="classification")


def test_frame_to_feeds_types_and_missing_values() -> None:
    X = pd.DataFrame({"size": [1.5, np.nan, None], "shape": ["round", None, np.nan]}, dtype=object)
    feeds = frame_to_feeds(X, [("size", "tensor(float)"), ("shape", "tensor(string)")])
    assert feeds["size"].dtype == np.float32 and feeds["size"].shape == (3, 1)
    assert feeds["size"][0, 0] == 1.5 and np.isnan(feeds["size"][1:, 0]).all()
    assert feeds["shape"].ravel().tolist() == ["round", "", ""]
    with pytest.raises(ConversionError, match="the frame has no column 'colour'"):
        frame_to_feeds(X, [("colour", "tensor(string)")])


def test_wrong_classes_are_refused() -> None:
    pipe = classifier()
    model = to_onnx(pipe, FEATURES, task="classification").to_bytes()
    with pytest.raises(ConversionError, match="differ from the pipeline's classes_"):
        check_parity(pipe, model, TEST, task="classification", classes=["small", "big"])
