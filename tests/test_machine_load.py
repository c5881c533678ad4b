"""The time-stamped recipe (models/machine-load.yaml): the timestamp is a real signal, the
bundle derives its features on the device from the raw ISO 8601 strings a client sends."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from rich.console import Console
from runtime_bundles import ServerProcess

from edgeml.bundle.inspect import describe
from edgeml.package.builder import package
from edgeml.train.recipe import parse_recipe
from edgeml.train.registry import Registry
from edgeml.train.workflow import TrainResult, train

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "models" / "machine-load.yaml"
MARGIN = 0.15  # f1_macro points the time features must add (measured: 0.886 vs 0.633)
QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult, TrainResult]:
    reg = tmp_path_factory.mktemp("registry")
    with_time = train(RECIPE, registry=reg, console=QUIET)
    raw = yaml.safe_load(RECIPE.read_text())
    raw["name"] = "machine-load-notime"
    raw["data"]["drop"] = ["timestamp"]  # still orders the split, no longer a feature
    raw["gates"] = {}
    without = train(parse_recipe(raw, RECIPE), registry=reg, console=QUIET)
    return reg, with_time, without


@pytest.fixture(scope="module")
def bundles(trained: tuple[Path, TrainResult, TrainResult],
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    reg, _, _ = trained
    out = tmp_path_factory.mktemp("bundles")
    return {t: package("machine-load", target=t, registry=reg, out_dir=out, console=QUIET).path
            for t in ("x86_64", "rpi4")}


@pytest.fixture(scope="module")
def server(bundles: dict[str, Path]) -> Iterator[ServerProcess]:
    srv = ServerProcess(bundles["x86_64"])
    yield srv
    stderr = srv.stop()
    assert "Traceback" not in stderr, stderr


def post(srv: ServerProcess, path: str, body: Any) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    conn.request("POST", path, body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def holdout_rows(reg: Path, n: int = 12) -> tuple[list[dict[str, Any]], list[str]]:
    """Raw rows as a device would send them (the timestamp string), and the pipeline's labels."""
    entry = Registry(reg).resolve("machine-load")
    X, _ = entry.load_holdout()
    raw = pd.read_csv(ROOT / "models" / "data" / "machine_load.csv")
    stamps = pd.read_parquet(entry.file("holdout"), columns=["timestamp"])["timestamp"]
    picked = raw.set_index("timestamp").loc[stamps.head(n)].reset_index()
    rows = [{"timestamp": r.timestamp, "machine_type": r.machine_type, "current_a": r.current_a,
             "temperature_c": r.temperature_c, "vibration_mm_s": r.vibration_mm_s}
            for r in picked.itertuples()]
    expected = [str(v) for v in entry.load_pipeline().predict(X.head(n))]
    return rows, expected


def test_time_features_beat_the_recipe_without_the_timestamp(
        trained: tuple[Path, TrainResult, TrainResult]) -> None:
    _, with_time, without = trained
    f1, f1_without = with_time.metrics["f1_macro"], without.metrics["f1_macro"]
    assert f1 >= f1_without + MARGIN, (f1, f1_without)
    assert f1 >= 0.8
    # same time-ordered split: the holdout is the last 20% in time for both
    assert with_time.entry.meta["data"]["holdout_rows"] == without.entry.meta["data"]["holdout_rows"]
    features = [f["name"] for f in with_time.entry.meta["features"]]
    assert "timestamp_hour_sin" in features and "timestamp" not in features
    assert not any(f["name"].startswith("timestamp") for f in without.entry.meta["features"])


def test_packages_with_parity_and_declares_the_derived_input(bundles: dict[str, Path]) -> None:
    for target, path in bundles.items():
        d = describe(path)
        assert d["target"]["name"] == target
        assert d["parity"]["passed"] is True and d["parity"]["rows"] == 600
        assert d["derived_inputs"] == [{
            "source": "timestamp", "kind": "datetime", "timezone": "UTC",
            "features": ["weekday", "weekend", "hour_sin", "hour_cos", "dayofyear_sin",
                         "dayofyear_cos"],
            "inputs": ["timestamp_weekday", "timestamp_weekend", "timestamp_hour_sin",
                       "timestamp_hour_cos", "timestamp_dayofyear_sin", "timestamp_dayofyear_cos"]}]
        # derived features are profiled for drift like any numeric feature
        with __import__("zipfile").ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
            selftest = json.loads(z.read("selftest.json"))
        profile = manifest["reference_profile"]["features"]["timestamp_hour_sin"]
        assert profile["kind"] == "numeric" and profile["bin_edges"]
        assert all(isinstance(r["timestamp"], str) and r["timestamp"].endswith("Z")
                   for r in selftest["rows"])  # the self-test feeds raw timestamps


def test_predicts_from_raw_timestamp_strings_over_http(
        server: ServerProcess, trained: tuple[Path, TrainResult, TrainResult]) -> None:
    rows, expected = holdout_rows(trained[0])
    status, doc = post(server, "/v1/predict", {"instances": rows})
    assert status == 200, doc
    assert [p["label"] for p in doc["predictions"]] == expected

    tensors = [{"name": k, "shape": [len(rows), 1],
                "datatype": "BYTES" if isinstance(rows[0][k], str) else "FP32",
                "data": [r[k] for r in rows]} for k in rows[0]]
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/v2/models/machine-load")
    meta = json.loads(conn.getresponse().read())
    conn.close()
    assert {"name": "timestamp", "datatype": "BYTES", "shape": [-1, 1]} in meta["inputs"]
    assert [i["name"] for i in meta["inputs"]] == list(rows[0])
    status, doc = post(server, "/v2/models/machine-load/infer", {"inputs": tensors})
    assert status == 200, doc
    labels = next(o for o in doc["outputs"] if o["name"] == "label")["data"]
    assert labels == expected


def test_a_bad_timestamp_is_a_400_naming_the_feature(
        server: ServerProcess, trained: tuple[Path, TrainResult, TrainResult]) -> None:
    rows, _ = holdout_rows(trained[0], 2)
    rows[1]["timestamp"] = "tomorrow"
    status, doc = post(server, "/v1/predict", {"instances": rows})
    assert status == 400, doc
    assert "feature 'timestamp' row 1: expected an ISO 8601 timestamp or Unix seconds" in doc["error"]
    rows[1]["timestamp"] = None  # missing is a missing value, imputed like any other
    status, doc = post(server, "/v1/predict", {"instances": rows})
    assert status == 200, doc
    assert len(doc["predictions"]) == 2


def test_inspect_shows_the_derived_input(bundles: dict[str, Path]) -> None:
    from edgeml.cli.bundle import render_description

    text = render_description(describe(bundles["rpi4"]))
    assert ("derived:  timestamp (datetime, naive = UTC) -> timestamp_weekday, timestamp_weekend, "
            "timestamp_hour_sin, timestamp_hour_cos, timestamp_dayofyear_sin, "
            "timestamp_dayofyear_cos") in text


def test_evaluate_on_new_data_with_raw_timestamps(
        trained: tuple[Path, TrainResult, TrainResult], tmp_path: Path) -> None:
    from edgeml.train.evaluate import evaluate_model

    reg, with_time, _ = trained
    raw = pd.read_csv(ROOT / "models" / "data" / "machine_load.csv").tail(600)  # = the holdout
    raw.to_csv(tmp_path / "new.csv", index=False)
    got = evaluate_model("machine-load", registry=reg, data=tmp_path / "new.csv")
    assert got["rows"] == 600
    assert got["metrics"]["f1_macro"] == pytest.approx(with_time.metrics["f1_macro"], abs=1e-9)


def test_mqtt_infer_with_raw_timestamps_and_derived_features_in_telemetry(
        bundles: dict[str, Path], trained: tuple[Path, TrainResult, TrainResult],
        tmp_path: Path) -> None:
    from _mqtt_support import (
        Recorder,
        clear_retained,
        http_predict,
        publish,
        start_serve,
        unique_id,
    )

    from edgeml.runtime.topics import DeviceTopics

    rows, expected = holdout_rows(trained[0])
    topics = DeviceTopics.create("edgeml", unique_id("fleet"), unique_id("dev"))
    reply_to = f"test-replies/{unique_id('load')}"
    replies, metrics = Recorder().start(reply_to), Recorder().start(topics.metrics)
    server = start_serve(bundles["x86_64"], "--broker", "mqtt://127.0.0.1:1883", "--device-id",
                         topics.device, "--fleet", topics.fleet, "--metrics-interval", "1",
                         "--spool", str(tmp_path / "spool"))
    try:
        metrics.wait_for(lambda m: True, what="first metrics window")
        publish(topics.infer, json.dumps({"instances": rows, "reply_to": reply_to,
                                          "correlation_id": "t-1"}))
        reply = replies.wait_for(lambda m: True, what="infer reply").json()
        assert http_predict(server.url, rows)[0] == 200
        window: dict[str, Any] = {}
        while not window.get("rows"):
            window = metrics.wait_for(lambda m: True, what="metrics with rows").json()
    finally:
        server.terminate()
        replies.stop()
        metrics.stop()
        clear_retained(topics.root)
    assert reply["status"] == "ok" and reply["correlation_id"] == "t-1", reply
    assert [p["label"] for p in reply["predictions"]] == expected
    hour = window["features"]["timestamp_hour_sin"]  # drift statistics of a derived feature
    assert hour["count"] == window["rows"] and sum(hour["counts"]) == window["rows"]
