"""The reference data profile stored in model.json (TEAM.md format)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from edgeml.train.profile import MAX_FREQUENCIES, OTHER, reference_profile


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
    assert profile["rows"] == 5
    t = profile["features"]["t"]
    assert t["kind"] == "numeric" and len(t["bin_edges"]) == 11 and len(t["counts"]) == 10
    assert t["bin_edges"][0] == 1.0 and t["bin_edges"][-1] == 11.0 and sum(t["counts"]) == 4
    assert t["missing_rate"] == pytest.approx(0.2)
    assert (t["min"], t["max"], t["mean"]) == (1.0, 11.0, 4.5)
    assert t["std"] == pytest.approx(np.std([1.0, 2.0, 4.0, 11.0]))
    flat = profile["features"]["flat"]
    assert flat["bin_edges"][0] < 3.0 < flat["bin_edges"][-1] and sum(flat["counts"]) == 5
    site = profile["features"]["site"]
    assert site == {"kind": "categorical", "frequencies": {"a": 0.75, "b": 0.25}, "missing_rate": 0.2}
    note = profile["features"]["note"]
    assert note["kind"] == "text" and len(note["length_bin_edges"]) == 11 and sum(note["length_counts"]) == 4
    assert profile["prediction"] == {"kind": "classification", "frequencies": {"x": 0.8, "y": 0.2}}
    json.dumps(profile, allow_nan=False)  # plain JSON, no NaN


def test_prediction_kinds_and_none() -> None:
    frame, kinds = _frame()
    assert "prediction" not in reference_profile(frame, kinds, task="regression", predictions=None)
    reg = reference_profile(frame, kinds, task="regression", predictions=np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert reg["prediction"]["kind"] == "regression" and reg["prediction"]["mean"] == 3.0
    assert len(reg["prediction"]["bin_edges"]) == 11
    anomaly = reference_profile(frame, kinds, task="anomaly", predictions=np.array([1, -1, 1, 1, -1]))
    assert anomaly["prediction"] == {"kind": "anomaly", "anomaly_rate": 0.4}


def test_many_categories_fold_into_other() -> None:
    frame = pd.DataFrame({"id": [f"v{i % 150}" for i in range(300)]})
    freq = reference_profile(frame, {"id": "categorical"}, task="anomaly", predictions=None)["features"]["id"]["frequencies"]
    assert len(freq) == MAX_FREQUENCIES + 1
    assert freq[OTHER] == pytest.approx(50 / 150)
    assert sum(freq.values()) == pytest.approx(1.0)
