"""RuntimeStats: counters, latency, binning on the reference profile, windows, Prometheus text,
observers, thread safety."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_factory import make_bundle
from prometheus_text import parse_prometheus, sample_value

from edgeml.runtime.predictor import Predictor
from edgeml.runtime.stats import RuntimeStats

ROW = {"temp": 20.0, "pressure": 1000.0, "color": "red"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("stats")
    return {t: make_bundle(root / t, t) for t in ("classification", "regression", "anomaly")}


@pytest.fixture(scope="module")
def clf(bundles: dict[str, Any]) -> Predictor:
    return Predictor(bundles["classification"].path)


def _record(stats: RuntimeStats, p: Predictor, rows: list[dict[str, Any]],
            latency: float = 0.001, endpoint: str = "/v1/predict") -> None:
    feeds = p.feeds(rows)
    stats.record(endpoint, latency, feeds, p.run(feeds))


# -- tests ------------------------------------------------------------------------------------


def test_numeric_features_are_binned_on_the_reference_edges(bundles: dict[str, Any],
                                                            clf: Predictor) -> None:
    manifest = clf.manifest
    edges = np.asarray(manifest.reference_profile["features"]["temp"]["bin_edges"])
    rng = np.random.default_rng(1)
    inside = rng.uniform(edges[0], edges[-1], 500)
    values = [*inside.tolist(), float(edges[-1]), float(edges[0]), edges[0] - 5.0, edges[-1] + 1.0,
              edges[-1] + 2.0, None]
    stats = RuntimeStats(manifest, flush_rows=64)  # several flushes and one final one
    for start in range(0, len(values), 7):
        _record(stats, clf, [{**ROW, "temp": v} for v in values[start:start + 7]])
    temp = stats.window()["features"]["temp"]
    in_range = np.asarray([*inside.tolist(), edges[-1], edges[0]], dtype=np.float32)
    expected, _ = np.histogram(in_range.astype(np.float64), bins=edges)
    assert temp["counts"] == expected.tolist()
    assert (temp["below"], temp["above"], temp["out_of_range"]) == (1, 2, 3)
    assert temp["missing"] == 1 and temp["count"] == len(values)
    assert math.isclose(temp["mean"], float(np.mean(np.asarray(values[:-1], np.float32))),
                        rel_tol=1e-6)


def test_categorical_counts_missing_and_unseen(clf: Predictor) -> None:
    stats = RuntimeStats(clf.manifest, max_categories=4)
    colors = ["red", "red", "blue", "", "purple", "pink", "teal", "red"]
    _record(stats, clf, [{**ROW, "color": c} for c in colors])
    color = stats.window()["features"]["color"]
    assert color["missing"] == 1
    assert color["unseen"] == 3  # purple, pink, teal
    assert color["counts"]["red"] == 3 and color["counts"]["blue"] == 1
    assert len(color["counts"]) == 4 and color["other"] == 1  # bounded


def test_window_reset_keeps_prometheus_counters_cumulative(clf: Predictor) -> None:
    stats = RuntimeStats.for_predictor(clf)
    for _ in range(3):
        _record(stats, clf, [ROW, ROW])
    stats.record_error("/v1/predict", "input")
    stats.record_request("/v2/health/live")
    first = stats.window(reset=True)
    assert first["requests"] == {"total": 5, "by_endpoint": {"/v1/predict": 4,
                                                             "/v2/health/live": 1}}
    assert first["errors"] == {"total": 1, "by_kind": {"input": 1}}
    assert first["rows"] == 6 and first["predictions"]["count"] == 6
    assert first["model"]["sha256"] == clf.sha256
    _record(stats, clf, [ROW])
    second = stats.window(reset=False)
    assert second["requests"]["total"] == 1 and second["rows"] == 1
    assert stats.window(reset=False)["rows"] == 1  # not reset
    fam = parse_prometheus(stats.prometheus_text())
    assert sample_value(fam, "edgeml_requests_total", endpoint="/v1/predict") == 5
    assert sample_value(fam, "edgeml_errors_total", kind="input") == 1
    assert sum(s[2] for s in fam["edgeml_predictions_total"]["samples"]) == 7
    assert sample_value(fam, "edgeml_request_latency_seconds_count") == 4
    assert sample_value(fam, "edgeml_model_info", name=clf.manifest.name, version="1",
                  target="x86_64", sha256=clf.sha256) == 1


def test_latency_percentiles_and_histogram(clf: Predictor) -> None:
    stats = RuntimeStats.for_predictor(clf, reservoir_size=10_000)
    feeds = clf.feeds([ROW])
    prediction = clf.run(feeds)
    for ms in range(1, 1001):
        stats.record("/v1/predict", ms / 1e6 * 1000 / 1000, feeds, prediction)  # 1 µs .. 1 ms
    fam = parse_prometheus(stats.prometheus_text())
    assert sample_value(fam, "edgeml_request_latency_seconds_bucket", le="0.0001") == 100
    assert sample_value(fam, "edgeml_request_latency_seconds_bucket", le="0.001") == 1000
    lat = stats.window()["latency_ms"]
    assert lat["count"] == 1000
    assert lat["p50"] == pytest.approx(0.5, abs=0.01)
    assert lat["p99"] == pytest.approx(0.99, abs=0.01)
    assert lat["max"] == pytest.approx(1.0)


def test_regression_and_anomaly_prediction_distributions(bundles: dict[str, Any]) -> None:
    reg = Predictor(bundles["regression"].path)
    stats = RuntimeStats.for_predictor(reg)
    frame = bundles["regression"].frame
    rows = frame.to_dict(orient="records")
    _record(stats, reg, rows)
    pred = stats.window()["predictions"]
    edges = np.asarray(reg.manifest.reference_profile["prediction"]["bin_edges"])
    values = reg.predict(rows).values.astype(np.float64)  # float32 outputs, as served
    inside = values[(values >= edges[0]) & (values <= edges[-1])]
    assert pred["kind"] == "regression"
    assert pred["counts"] == np.histogram(inside, bins=edges)[0].tolist()
    assert pred["out_of_range"] == len(values) - len(inside) <= 2  # float32 vs float64 edges
    fam = parse_prometheus(stats.prometheus_text())
    assert sample_value(fam, "edgeml_predictions_total") == len(frame)

    ano = Predictor(bundles["anomaly"].path)
    stats = RuntimeStats.for_predictor(ano)
    frame = bundles["anomaly"].frame
    _record(stats, ano, frame.to_dict(orient="records"))
    pred = stats.window()["predictions"]
    expected = float((bundles["anomaly"].pipeline.predict(frame) == -1).mean())
    assert pred["kind"] == "anomaly" and pred["anomaly_rate"] == pytest.approx(expected)
    fam = parse_prometheus(stats.prometheus_text())
    assert sample_value(fam, "edgeml_predictions_total", **{"class": "anomaly"}) == pred["anomalies"]


def test_observers_see_every_prediction_and_cannot_break_recording(clf: Predictor) -> None:
    stats = RuntimeStats.for_predictor(clf)
    seen: list[tuple[Any, ...]] = []

    def broken(*args: Any) -> None:
        raise RuntimeError("observer bug")

    stats.observers.append(broken)
    stats.observers.append(lambda feeds, pred, latency, source: seen.append(
        (sorted(feeds), pred.labels, latency, source)))
    _record(stats, clf, [ROW, ROW], latency=0.002)
    feeds = clf.feeds([ROW])
    stats.record("mqtt/infer", 0.003, feeds, clf.run(feeds), source="mqtt")
    assert seen[0][0] == ["color", "pressure", "temp"] and len(seen[0][1]) == 2
    assert seen[0][2:] == (0.002, "http") and seen[1][2:] == (0.003, "mqtt")
    assert stats.window()["requests"]["total"] == 2


def test_label_values_are_escaped(tmp_path: Path) -> None:
    built = make_bundle(tmp_path, "classification", name="quote-test")
    p = Predictor(built.path)
    stats = RuntimeStats.for_predictor(p)
    stats.record_error('weird "endpoint"\\\n', "input")
    fam = parse_prometheus(stats.prometheus_text())
    assert sample_value(fam, "edgeml_requests_total", endpoint='weird \\"endpoint\\"\\\\\\n') == 1


def test_concurrent_recording_loses_nothing(clf: Predictor) -> None:
    stats = RuntimeStats.for_predictor(clf, flush_rows=100)
    feeds = clf.feeds([ROW, {**ROW, "temp": 35.0}])
    prediction = clf.run(feeds)

    def work() -> None:
        for _ in range(2000):
            stats.record("/v1/predict", 0.0005, feeds, prediction)
            stats.record_error("/v1/predict", "input")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    snaps = [stats.window(reset=True) for _ in range(20)]
    for t in threads:
        t.join()
    snaps.append(stats.window(reset=True))
    assert sum(s["rows"] for s in snaps) == 4 * 2000 * 2
    assert sum(s["features"]["temp"]["count"] for s in snaps) == 4 * 2000 * 2
    assert sum(s["errors"]["total"] for s in snaps) == 4 * 2000
    fam = parse_prometheus(stats.prometheus_text())
    assert sample_value(fam, "edgeml_requests_total", endpoint="/v1/predict") == 4 * 2000 * 2


# -- quantile reference profiles (edgeml.train.reference) ---------------------------------------


@pytest.fixture(scope="module")
def fleet_predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    from fleet_support import make_fleet_bundle

    path, _ = make_fleet_bundle(tmp_path_factory.mktemp("stats-fleet"), n=800)
    return Predictor(path)


def test_open_quantile_bins_take_every_value_and_count_out_of_range(fleet_predictor: Predictor) -> None:
    p = fleet_predictor
    ref = p.manifest.reference_profile["features"]["temp"]
    edges = np.asarray(ref["bin_edges"])
    values = [ref["min"] - 50.0, float(edges[0]) - 0.01, float(edges[0]), float(edges[3]),
              float(edges[-1]) + 0.5, ref["max"] + 1.0, ref["max"] + 2.0, None]
    stats = RuntimeStats(p.manifest, flush_rows=3)
    for v in values:
        _record(stats, p, [{**ROW, "temp": v}])
    temp = stats.window()["features"]["temp"]
    expected = np.bincount(np.searchsorted(edges, np.asarray(values[:-1], dtype=np.float32)
                                           .astype(np.float64), side="right"), minlength=len(edges) + 1)
    assert temp["counts"] == expected.tolist() and len(temp["counts"]) == len(edges) + 1
    assert (temp["below"], temp["above"], temp["out_of_range"], temp["missing"]) == (1, 2, 3, 1)


def test_confidence_histogram_and_class_counts_follow_the_reference(fleet_predictor: Predictor) -> None:
    p = fleet_predictor
    stats = RuntimeStats(p.manifest, flush_rows=50)
    rows = [{"temp": t, "pressure": 1000.0 + (t % 7), "color": ("red", "blue", "green")[int(t) % 3]}
            for t in np.linspace(-5, 45, 173).tolist()]
    for start in range(0, len(rows), 9):
        _record(stats, p, rows[start:start + 9])
    pred = stats.window()["predictions"]
    probs = p.run(p.feeds(rows)).probabilities
    assert probs is not None
    top = probs.max(axis=1).astype(np.float64)
    expected = np.bincount(np.minimum((top * 10).astype(int), 9), minlength=10)
    assert pred["confidence"]["counts"] == expected.tolist()
    assert pred["confidence"]["count"] == len(rows)
    assert pred["confidence"]["mean"] == pytest.approx(float(top.mean()), rel=1e-6)
    labels = p.run(p.feeds(rows)).labels or []
    assert pred["by_class"] == [labels.count(c) for c in p.manifest.outputs.classes or []]


def test_categorical_known_counts_are_in_the_reference_order(fleet_predictor: Predictor) -> None:
    from edgeml.runtime.features import reference_categories

    p = fleet_predictor
    stats = RuntimeStats(p.manifest)
    colors = ["red", "red", "blue", "purple", "", "green", "red"]
    for c in colors:
        _record(stats, p, [{**ROW, "color": c}])
    color = stats.window()["features"]["color"]
    spec = next(s for s in p.manifest.inputs if s.name == "color")
    order = reference_categories(spec, p.manifest.reference_profile["features"]["color"])
    assert color["known"] == [colors.count(c) for c in order]
    assert (color["unseen"], color["missing"]) == (1, 1)
