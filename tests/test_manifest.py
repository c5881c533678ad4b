"""The manifest's metrics have one typed shape, validated on load with errors naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
import tiny_bundle

from edgeml.bundle import Manifest, Metrics
from edgeml.bundle.manifest import MANIFEST
from edgeml.errors import BundleError


def _raw(**metrics: Any) -> dict[str, Any]:
    _manifest, files = tiny_bundle.members(tiny_bundle.model_bytes())
    raw = json.loads(files[MANIFEST])
    raw["metrics"] = metrics
    return raw


def test_metrics_round_trip_through_manifest_json() -> None:
    raw = _raw(primary="f1_macro", holdout={"accuracy": 1, "f1_macro": 0.5}, holdout_rows=4,
               confusion_matrix=[[2, 0], [1, 1]],
               per_class={"ok": {"precision": 0.67, "recall": 1.0, "f1": 0.8, "support": 2}})
    m = Manifest.from_dict(raw)
    assert m.metrics == Metrics(primary="f1_macro", holdout={"accuracy": 1.0, "f1_macro": 0.5},
                                holdout_rows=4, confusion_matrix=[[2, 0], [1, 1]],
                                per_class={"ok": {"precision": 0.67, "recall": 1.0, "f1": 0.8,
                                                  "support": 2}})
    assert m.metrics.primary_value == 0.5
    again = json.loads(m.to_json())["metrics"]
    assert again["holdout"] == {"accuracy": 1.0, "f1_macro": 0.5}
    assert again["per_class"]["ok"]["support"] == 2 and isinstance(again["per_class"]["ok"]["support"], int)
    assert Manifest.from_dict(_raw()).metrics == Metrics()  # a bundle without metrics


@pytest.mark.parametrize(("metrics", "message"), [
    ({"accuracy": 0.9}, r"metrics\.accuracy: unknown field"),
    ({"primary": "r2", "holdout": {"accuracy": 0.9}}, r"metrics\.primary: 'r2' is not a holdout metric"),
    ({"holdout": {"accuracy": 0.9}}, r"metrics\.primary: missing"),
    ({"primary": "accuracy", "holdout": {"accuracy": "high"}},
     r"metrics\.holdout\.accuracy: expected a finite number, got 'high'"),
    ({"primary": "accuracy", "holdout": {"accuracy": True}}, r"metrics\.holdout\.accuracy: expected"),
    ({"primary": "accuracy", "holdout": {"accuracy": 1.0}, "holdout_rows": -1},
     r"metrics\.holdout_rows: expected a count"),
    ({"primary": "accuracy", "holdout": {"accuracy": 1.0}, "confusion_matrix": [[1, 2]]},
     r"metrics\.confusion_matrix: expected a square matrix of counts"),
    ({"primary": "accuracy", "holdout": {"accuracy": 1.0}, "per_class": {"ok": {"f1": "x"}}},
     r"metrics\.per_class\.ok\.f1: expected a finite number"),
])
def test_bad_metrics_are_refused_naming_the_field(metrics: dict[str, Any], message: str) -> None:
    with pytest.raises(BundleError, match=rf"^{MANIFEST}: {message}"):
        Manifest.from_dict(_raw(**metrics))


def test_from_holdout_keeps_scalars_and_drops_undefined_ones() -> None:
    m = Metrics.from_holdout({"r2": 0.4, "mae": 3, "mape": None, "roc": float("nan")},
                             primary="r2", rows=10)
    assert (m.primary, m.holdout, m.holdout_rows) == ("r2", {"mae": 3.0, "r2": 0.4}, 10)
    assert Metrics.from_holdout({"mape": None}, primary="mape").primary is None
    assert Metrics.from_holdout({"r2": None, "mae": 2.0}, primary="r2").primary == "mae"


def test_a_format_1_manifest_is_refused_with_the_versions() -> None:
    raw = _raw()
    raw["format_version"] = 1
    with pytest.raises(BundleError, match=r"format_version: 1 is not supported \(this edgeml reads 2\)"):
        Manifest.from_dict(raw)
