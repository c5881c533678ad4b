"""Metrics against hand-computed values, report.html content, and ``edgeml evaluate``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from edgeml.cli import main
from edgeml.train.evaluate import evaluate
from edgeml.train.report import write_report


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_multiclass_metrics_by_hand() -> None:
    y_true = ["a", "a", "b", "b", "c", "c"]
    y_pred = ["a", "b", "b", "b", "c", "a"]
    m = evaluate("classification", y_true, y_pred, classes=["a", "b", "c"])
    # a: tp 1 of 2 predicted, 2 true; b: tp 2 of 3 predicted; c: tp 1 of 1 predicted
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["balanced_accuracy"] == pytest.approx(m["recall_macro"])
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["f1_weighted"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)  # equal supports
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                   "support": 2}
    assert m["roc_auc_ovr"] is None and m["log_loss"] is None  # no probabilities given


def test_binary_probabilities_by_hand() -> None:
    y_true = ["n", "n", "p", "p"]
    proba_p = np.array([0.1, 0.4, 0.35, 0.8])
    proba = np.column_stack([1 - proba_p, proba_p])
    m = evaluate("classification", y_true, ["n", "n", "n", "p"], proba=proba, classes=["n", "p"])
    assert m["roc_auc_ovr"] == pytest.approx(0.75)  # 3 of 4 (p, n) pairs ranked right
    expected = -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    assert m["log_loss"] == pytest.approx(expected)
    assert m["precision_weighted"] == pytest.approx(0.5 * (2 / 3) + 0.5 * 1.0)


def test_undefined_metrics_are_none_without_warnings() -> None:
    proba = np.array([[0.9, 0.1], [0.6, 0.4]])
    m = evaluate("classification", ["n", "n"], ["n", "p"], proba=proba, classes=["n", "p"])
    assert m["roc_auc_ovr"] is None  # one class present
    assert m["per_class"]["p"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_regression_by_hand() -> None:
    m = evaluate("regression", [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0])
    assert m == {"mae": 0.25, "rmse": 0.5, "r2": pytest.approx(0.8), "mape": pytest.approx(0.0625)}


def test_anomaly_by_hand() -> None:
    labels = [0, 0, 1, 1, 0]
    pred = [1, -1, -1, 1, 1]  # scikit-learn: -1 = anomaly
    scores = np.array([0.3, -0.1, -0.2, 0.05, 0.2])
    m = evaluate("anomaly", labels, pred, scores=scores)
    assert m["anomaly_rate"] == pytest.approx(0.4)
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    assert m["confusion_matrix"] == [[2, 1], [1, 1]]
    assert m["roc_auc"] == pytest.approx(5 / 6)  # anomalies score lower than 5 of 6 pairs
    assert evaluate("anomaly", None, pred) == {"anomaly_rate": pytest.approx(0.4)}


def _pre(numeric: list[str], categorical: list[str]) -> ColumnTransformer:
    return ColumnTransformer([
        ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), numeric),
        ("categorical", Pipeline([("impute", SimpleImputer(missing_values="", strategy="most_frequent")),
                                  ("encode", OneHotEncoder(handle_unknown="ignore"))]), categorical),
    ], sparse_threshold=0)


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                      "site": rng.choice(["n", "s"], n).astype(object)})
    return x, x["a"].to_numpy() + 0.5 * x["b"].to_numpy()


def _report(tmp_path: Path, task: str, pipeline: Any, x: pd.DataFrame, y: Any,
            classes: list[str] | None, metrics: dict[str, Any]) -> str:
    half = len(x) // 2
    path = write_report(
        tmp_path / "report.html", name="demo", version=3, task=task, pipeline=pipeline,
        X_train=x.iloc[:half], y_train=y.iloc[:half] if y is not None else None,
        X_holdout=x.iloc[half:], y_holdout=y.iloc[half:] if y is not None else None,
        metrics=metrics, leaderboard=[{"rank": 1, "family": "f", "params": {"C": 1.0}, "cv_mean": 0.9,
                                       "cv_std": 0.01, "fit_time_s": 0.01}],
        gates=[{"metric": "m", "op": ">=", "threshold": 0.5, "value": 0.9, "passed": True}],
        classes=classes, seed=0)
    assert path == tmp_path / "report.html"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # written atomically, no leftovers
    html = path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert 'class="note">not available' not in html, re.findall(r'not available: [^<]*', html)
    return html


def _sections(html: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", html)


def _images(html: str) -> list[str]:
    return re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', html)


def test_classification_report(tmp_path: Path) -> None:
    x, s = _frame(200, 0)
    y = pd.Series(np.where(s > 0.5, "high", np.where(s < -0.5, "low", "mid")), dtype=object)
    pipe = Pipeline([("preprocess", _pre(["a", "b"], ["site"])), ("model", LogisticRegression())])
    pipe.fit(x.iloc[:100], y.iloc[:100])
    hold = x.iloc[100:]
    metrics = evaluate("classification", y.iloc[100:], pipe.predict(hold), proba=pipe.predict_proba(hold),
                       classes=list(pipe.classes_))
    html = _report(tmp_path, "classification", pipe, x, y, list(pipe.classes_), metrics)
    assert _sections(html) == ["Summary", "Holdout metrics", "Gates", "Leaderboard", "Confusion matrix",
                               "ROC and precision-recall curves", "Permutation importance", "Learning curve"]
    assert _images(html) == ["Confusion matrix (holdout)", "ROC curves", "precision-recall curves",
                             "permutation importance", "learning curve"]
    assert "demo@3" in html and "f1_macro" in html and "passed" in html
    assert re.search(r"<td>a</td><td>0\.\d+</td>", html)  # importance by raw feature name


def test_regression_report(tmp_path: Path) -> None:
    x, s = _frame(160, 1)
    y = pd.Series(3 * s + 1)
    pipe = Pipeline([("preprocess", _pre(["a", "b"], ["site"])), ("model", Ridge())]).fit(x.iloc[:80], y.iloc[:80])
    metrics = evaluate("regression", y.iloc[80:], pipe.predict(x.iloc[80:]))
    html = _report(tmp_path, "regression", pipe, x, y, None, metrics)
    assert "Predicted vs actual, residuals" in _sections(html)
    assert {"predicted vs actual", "residuals", "permutation importance", "learning curve"} <= set(_images(html))
    assert "rmse" in html


def test_anomaly_report(tmp_path: Path) -> None:
    x, _ = _frame(200, 2)
    x.loc[x.index[::20], "a"] = 8.0
    y = pd.Series((x["a"] > 5).astype(int))
    pipe = Pipeline([("preprocess", _pre(["a", "b"], ["site"])),
                     ("model", IsolationForest(n_estimators=30, contamination=0.05, random_state=0))])
    pipe.fit(x.iloc[:100])
    hold = x.iloc[100:]
    metrics = evaluate("anomaly", y.iloc[100:], pipe.predict(hold), scores=pipe.decision_function(hold))
    html = _report(tmp_path, "anomaly", pipe, x, y, None, metrics)
    assert {"anomaly scores", "Flagged vs labelled (holdout)", "permutation importance"} <= set(_images(html))
    assert "Not drawn for anomaly detection" in html


# ---------------------------------------------------------------- edgeml evaluate


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate")
    recipe = {
        "name": "iris", "task": "classification",
        "data": {"source": "sklearn:iris", "target": "target"},
        "split": {"holdout": 0.3, "cv": 2, "seed": 1},
        "candidates": [{"family": "logistic_regression", "params": {"C": [1.0]}}],
    }
    (folder / "iris.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit) as exc:
        main(["train", str(folder / "iris.yaml"), "--registry", str(folder / "reg")])
    assert exc.value.code == 0
    return folder / "reg"


def test_evaluate_on_stored_holdout_matches_training(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["evaluate", "iris", "--registry", str(registry), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    meta = json.loads((registry / "iris" / "1" / "model.json").read_text())
    assert result["model"] == "iris@1" and result["rows"] == meta["data"]["holdout_rows"]
    now, then = result["metrics"], meta["metrics"]["holdout"]
    assert now.keys() == then.keys()
    for key in ("accuracy", "f1_macro", "roc_auc_ovr", "log_loss"):
        assert now[key] == pytest.approx(then[key]), key
    assert now["confusion_matrix"] == then["confusion_matrix"]
    code, out, _ = run_main(["evaluate", "iris@1", "--registry", str(registry)], capsys)
    assert code == 0
    assert "iris@1" in out and "accuracy" in out and "Confusion matrix" in out and "setosa" in out


def test_evaluate_on_new_data(registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "code"})
    frame["target"] = [str(bunch.target_names[i]) for i in frame.pop("code")]
    frame.loc[[0, 1], "target"] = None  # rows without a label are left out
    frame.to_csv(tmp_path / "new.csv", index=False)
    code, out, err = run_main(["evaluate", "iris", "--registry", str(registry), "--data",
                               str(tmp_path / "new.csv"), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["rows"] == 150 and result["dropped_missing_target"] == 2
    assert sum(result["metrics"]["per_class"][c]["support"] for c in ("setosa", "versicolor", "virginica")) == 148
    assert result["metrics"]["accuracy"] > 0.9

    frame.drop(columns=["petal width (cm)"]).to_csv(tmp_path / "short.csv", index=False)
    code, _, err = run_main(["evaluate", "iris", "--registry", str(registry), "--data",
                             str(tmp_path / "short.csv")], capsys)
    assert code == 2 and "lacks feature column(s) petal width (cm) that iris@1 needs" in err


def test_evaluate_unknown_model_exits_2(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["evaluate", "nosuch", "--registry", str(registry)], capsys)
    assert code == 2 and "no model 'nosuch'" in err and "iris" in err


def test_anomaly_report_without_labels(tmp_path: Path) -> None:
    x, _ = _frame(120, 4)
    pipe = Pipeline([("preprocess", _pre(["a", "b"], ["site"])),
                     ("model", IsolationForest(n_estimators=20, random_state=0))]).fit(x.iloc[:60])
    metrics = evaluate("anomaly", None, pipe.predict(x.iloc[60:]))
    html = _report(tmp_path, "anomaly", pipe, x, None, None, metrics)
    assert _images(html) == ["anomaly scores"]
    assert "Needs labels: the holdout has no target column." in html
