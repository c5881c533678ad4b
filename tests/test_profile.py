"""The reference profile (edgeml.train.reference): quantile bins, holdout predictions, confidence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from edgeml.train.reference import MAX_FREQUENCIES, OTHER, reference_profile


def _frame() -> tuple[pd.DataFrame, dict[str, str]]:
    frame = pd.DataFrame({
        "t": [1.0, 2.0, np.nan, 4.0, 11.0],
        "flat": [3.0] * 5,
        "site": ["a", "b", "a", "", "a"],
        "note": ["hi", "hello", "", "a much longer note", "ok"],
    })
    return frame, {"t": "numeric", "flat": "numeric", "site": "categorical", "note": "text"}


def test_features_follow_the_contract() -> None:
    frame, kinds = _frame()
    profile = reference_profile(frame, kinds, task="classification", predictions=np.array(["x", "y", "x", "x", "x"]))
    assert profile["rows"] == 5 and profile["format"] == 2
    t = profile["features"]["t"]
    values = np.array([1.0, 2.0, 4.0, 11.0])
    assert t["kind"] == "numeric" and t["binning"] == "quantile"
    assert t["bin_edges"] == pytest.approx(np.quantile(values, np.arange(1, 10) / 10).tolist())
    assert len(t["counts"]) == len(t["bin_edges"]) + 1 and sum(t["counts"]) == 4
    assert t["missing_rate"] == pytest.approx(0.2)
    assert (t["min"], t["max"], t["mean"]) == (1.0, 11.0, 4.5)
    assert t["std"] == pytest.approx(np.std([1.0, 2.0, 4.0, 11.0]))
    flat = profile["features"]["flat"]  # a constant: one edge, two open bins
    assert flat["bin_edges"] == [3.0] and flat["counts"] == [0, 5]
    site = profile["features"]["site"]
    assert site == {"kind": "categorical", "frequencies": {"a": 0.75, "b": 0.25}, "missing_rate": 0.2}
    note = profile["features"]["note"]
    assert note["kind"] == "text" and sum(note["length_counts"]) == 4
    assert len(note["length_counts"]) == len(note["length_bin_edges"]) + 1
    assert profile["prediction"] == {"kind": "classification", "rows": 5,
                                     "frequencies": {"x": 0.8, "y": 0.2}}
    json.dumps(profile, allow_nan=False)  # plain JSON, no NaN


def test_quantile_bins_hold_a_tenth_each_and_dedupe_for_discrete_features() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(5, 2, 10_000), "k": rng.integers(0, 3, 10_000).astype(float)})
    prof = reference_profile(frame, {"x": "numeric", "k": "numeric"}, task="regression", predictions=None)
    x = prof["features"]["x"]
    assert len(x["bin_edges"]) == 9 and len(x["counts"]) == 10
    assert all(abs(c - 1000) <= 1 for c in x["counts"])  # deciles: a tenth of the rows per bin
    k = prof["features"]["k"]  # three values: the duplicated deciles collapse
    assert k["bin_edges"] == sorted(set(k["bin_edges"])) and len(k["bin_edges"]) <= 3
    assert sum(k["counts"]) == 10_000 and len(k["counts"]) == len(k["bin_edges"]) + 1


def test_holdout_confidence_histogram_and_per_bin_accuracy() -> None:
    frame, kinds = _frame()
    proba = np.array([[0.95, 0.05], [0.55, 0.45], [0.3, 0.7], [0.99, 0.01], [0.61, 0.39]])
    pred = np.array(["x", "x", "y", "x", "x"])
    truth = np.array(["x", "y", "y", "x", "y"])
    p = reference_profile(frame, kinds, task="classification", predictions=pred, proba=proba,
                          y_true=truth)["prediction"]
    conf = p["confidence"]
    assert conf["bin_edges"] == pytest.approx([i / 10 for i in range(11)])
    assert conf["counts"] == [0, 0, 0, 0, 0, 1, 1, 1, 0, 2]
    assert conf["mean"] == pytest.approx(np.mean([0.95, 0.55, 0.7, 0.99, 0.61]))
    assert conf["accuracy"] == [None, None, None, None, None, 0.0, 0.0, 1.0, None, 1.0]


def test_prediction_kinds_and_none() -> None:
    frame, kinds = _frame()
    assert "prediction" not in reference_profile(frame, kinds, task="regression", predictions=None)
    reg = reference_profile(frame, kinds, task="regression", predictions=np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert reg["prediction"]["kind"] == "regression" and reg["prediction"]["mean"] == 3.0
    assert reg["prediction"]["binning"] == "quantile" and sum(reg["prediction"]["counts"]) == 5
    anomaly = reference_profile(frame, kinds, task="anomaly", predictions=np.array([1, -1, 1, 1, -1]),
                                scores=np.array([0.2, -0.1, 0.3, 0.25, -0.2]))["prediction"]
    assert anomaly["anomaly_rate"] == 0.4 and anomaly["rows"] == 5
    assert sum(anomaly["counts"]) == 5 and len(anomaly["counts"]) == len(anomaly["bin_edges"]) + 1


def test_many_categories_fold_into_other() -> None:
    frame = pd.DataFrame({"id": [f"v{i % 150}" for i in range(300)]})
    freq = reference_profile(frame, {"id": "categorical"}, task="anomaly", predictions=None)["features"]["id"]["frequencies"]
    assert len(freq) == MAX_FREQUENCIES + 1
    assert freq[OTHER] == pytest.approx(50 / 150)
    assert sum(freq.values()) == pytest.approx(1.0)
