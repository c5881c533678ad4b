"""``edgeml serve --broker``: every topic and payload, seen by a separate MQTT client.

Runs against the shared Mosquitto at 127.0.0.1:1883 with a unique fleet and device per
test; retained topics are cleared at teardown.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from _mqtt_support import (
    GOOD_ROW,
    Recorder,
    Server,
    clear_retained,
    http_predict,
    make_bundle,
    publish,
    start_serve,
    unique_id,
)
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeml.runtime.topics import DeviceTopics

BROKER = "mqtt://127.0.0.1:1883"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def device(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, DeviceTopics]]:
    """One serving device for the non-destructive tests of this module."""
    topics = DeviceTopics.create("edgeml", unique_id("fleet"), unique_id("dev"))
    watch = Recorder().start(topics.state)
    server = start_serve(
        bundle, "--broker", BROKER, "--device-id", topics.device, "--fleet", topics.fleet,
        "--metrics-interval", "1", "--sample-rate", "1",
        "--spool", str(tmp_path_factory.mktemp("spool")),
    )
    try:
        # Homie order on connect: init, ($info, subscriptions), ready.
        assert watch.wait_for(lambda m: True, what="$state").payload == b"init"
        assert watch.wait_for(lambda m: True, what="$state").payload == b"ready"
        watch.stop()
        yield server, topics
    finally:
        server.terminate()
        clear_retained(topics.root)


@pytest.fixture
def recorder(device: tuple[Server, DeviceTopics]) -> Iterator[Recorder]:
    _, topics = device
    rec = Recorder().start(topics.everything())
    yield rec
    rec.stop()


def _v5_request(topic: str, body: object, reply_to: str, correlation: bytes) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_to
    props.CorrelationData = correlation
    publish(topic, json.dumps(body), properties=props)


def test_serve_prints_url_and_topics(device: tuple[Server, DeviceTopics]) -> None:
    server, topics = device
    text = "".join(server.lines)
    assert f"http: {server.url}" in text
    assert topics.metrics in text and topics.infer in text


def test_state_and_info_are_retained(device: tuple[Server, DeviceTopics], recorder: Recorder,
                                     bundle: Path) -> None:
    _, topics = device
    # The device is up: this subscriber arrives later and gets the retained messages.
    state = recorder.wait_for(lambda m: m.topic == topics.state, what="$state")
    assert (state.payload, state.retain) == (b"ready", True)
    info_msg = recorder.wait_for(lambda m: m.topic == topics.info, what="$info")
    assert info_msg.retain
    info = info_msg.json()
    with zipfile.ZipFile(bundle) as zf:
        sha = hashlib.sha256(zf.read("model.onnx")).hexdigest()
    assert info["schema"] == "edgeml.info/2"
    assert (info["device"], info["fleet"]) == (topics.device, topics.fleet)
    assert info["session"] >= 1
    assert info["model"]["name"] == "pump" and info["model"]["version"] == 1
    assert info["model"]["sha256"] == sha
    assert info["model"]["bundle"] == bundle.name
    assert info["target"] == {"name": "x86_64", "arch": "x86_64"}
    assert {"arch", "python", "onnxruntime", "edgeml"} <= set(info["platform"])
    assert info["mqtt"]["protocol"] == "5"
    assert info["topics"]["metrics"] == topics.metrics
    assert info["started_at"].endswith("Z")
    assert info["http"].startswith("http://127.0.0.1:")
    # The session counter travels with $state as an MQTT v5 user property (bdSeq-like).
    assert ("session", str(info["session"])) in state.properties.UserProperty


def test_metrics_windows_after_http_predictions(device: tuple[Server, DeviceTopics],
                                                recorder: Recorder) -> None:
    server, topics = device
    first = recorder.wait_for(lambda m: m.topic == topics.metrics, what="metrics").json()
    rows = [GOOD_ROW] * 3 + [{"temp": 500.0, "vibration": 0.5, "mode": "eco"}]
    for _ in range(5):
        status, _ = http_predict(server.url, rows)
        assert status == 200
    status, _ = http_predict(server.url, [{"temp": "hot", "vibration": 0.1, "mode": "eco"}])
    assert status == 400
    seqs = [first["seq"]]
    totals = {"rows": 0, "errors": 0, "out_of_range": 0, "temp": 0, "ok": 0, "fault": 0}
    while totals["rows"] < 20 or totals["errors"] < 1:
        m = recorder.wait_for(lambda m: m.topic == topics.metrics, what="metrics").json()
        seqs.append(m["seq"])
        assert m["schema"] == "edgeml.metrics/2"
        assert (m["device"], m["fleet"]) == (topics.device, topics.fleet)
        assert m["window"]["seconds"] > 0 and m["window"]["start"] < m["window"]["end"]
        assert m["spool"]["dropped_total"] == 0
        assert m["process"]["rss_bytes"] > 10_000_000
        assert "load1" in m["system"] and "temperature_c" in m["system"]
        totals["rows"] += m["rows"]
        totals["errors"] += m["errors"]["total"]
        totals["out_of_range"] += m["features"]["temp"]["out_of_range"]
        totals["temp"] += sum(m["features"]["temp"]["counts"])
        for label in ("ok", "fault"):
            totals[label] += m["predictions"]["counts"].get(label, 0)
        if m["rows"]:
            assert m["latency_ms"]["p50"] > 0
            assert m["latency_ms"]["p99"] >= m["latency_ms"]["p50"]
    assert totals["rows"] == 20
    assert totals["out_of_range"] == 5
    assert totals["temp"] == 15  # binned on the reference profile's edges; the rest out of range
    assert totals["ok"] + totals["fault"] == 20
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # consecutive, no gap


def test_samples_and_feedback_round_trip(device: tuple[Server, DeviceTopics],
                                         recorder: Recorder) -> None:
    server, topics = device
    row = {"temp": 61.5, "vibration": 0.75, "mode": "manual"}
    status, _ = http_predict(server.url, [row])
    assert status == 200
    sample = recorder.wait_for(
        lambda m: m.topic == topics.samples and m.json()["features"] == row, what="sample"
    ).json()
    assert sample["schema"] == "edgeml.sample/1"
    assert sample["prediction"]["label"] in ("ok", "fault")
    assert set(sample["prediction"]["probabilities"]) == {"ok", "fault"}
    assert sample["device"] == topics.device
    publish(topics.feedback_set, json.dumps({"id": sample["id"], "label": "fault"}))
    fb = recorder.wait_for(lambda m: m.topic == topics.feedback, what="feedback").json()
    assert fb["schema"] == "edgeml.feedback/1"
    assert (fb["id"], fb["label"]) == (sample["id"], "fault")
    assert fb["features"] == row and fb["prediction"] == sample["prediction"]
    assert fb["sample_ts"] == sample["ts"] and fb["ts"] >= sample["ts"]
    # An unknown id is refused; a request that names a reply topic hears why.
    reply_to = f"test-replies/{unique_id('fb')}"
    rec = Recorder().start(reply_to)
    try:
        _v5_request(topics.feedback_set, {"id": "nope", "label": "ok"}, reply_to, b"c1")
        reply = rec.wait_for(lambda m: True, what="feedback reply")
    finally:
        rec.stop()
    assert reply.json()["status"] == "error" and "unknown sample id" in reply.json()["error"]
    m = recorder.wait_for(lambda m: m.topic == topics.metrics and m.json()["mqtt"]["feedback_rejected"],
                          what="metrics counting the rejected feedback").json()
    assert m["mqtt"]["feedback_rejected"] == 1


def test_mqtt_v5_inference(device: tuple[Server, DeviceTopics]) -> None:
    _, topics = device
    reply_to = f"test-replies/{unique_id('infer')}"
    rec = Recorder().start(reply_to)
    try:
        _v5_request(topics.infer, {"instances": [GOOD_ROW, GOOD_ROW]}, reply_to, b"\x00req-1")
        ok = rec.wait_for(lambda m: True, what="inference reply")
        _v5_request(topics.infer, {"instances": [{"temp": 1.0, "mode": "eco"}]}, reply_to, b"req-2")
        bad = rec.wait_for(lambda m: True, what="error reply")
        _v5_request(topics.infer, "{not json", reply_to, b"req-3")  # a JSON string, not an object
        bad_shape = rec.wait_for(lambda m: True, what="error reply")
    finally:
        rec.stop()
    body = ok.json()
    assert ok.properties.CorrelationData == b"\x00req-1"
    assert body["schema"] == "edgeml.infer.response/1" and body["status"] == "ok"
    assert [p["label"] for p in body["predictions"]] == ["ok", "ok"]
    assert body["model"] == {"name": "pump", "version": 1}
    assert bad.properties.CorrelationData == b"req-2"
    assert bad.json()["status"] == "error"
    assert "missing feature 'vibration'" in bad.json()["error"]
    assert bad_shape.properties.CorrelationData == b"req-3"
    assert bad_shape.json()["status"] == "error"


def test_mqtt_311_inference_with_reply_to_in_the_body(device: tuple[Server, DeviceTopics]) -> None:
    _, topics = device
    reply_to = f"test-replies/{unique_id('v311')}"
    rec = Recorder().start(reply_to)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("v311"),
                         protocol=mqtt.MQTTv311)
    try:
        client.connect("127.0.0.1", 1883)
        client.loop_start()
        body = {"instances": [GOOD_ROW], "reply_to": reply_to, "correlation_id": "abc-1"}
        client.publish(topics.infer, json.dumps(body), qos=1).wait_for_publish(5)
        client.publish(topics.infer, b"not json", qos=1).wait_for_publish(5)
        reply = rec.wait_for(lambda m: True, what="3.1.1 reply").json()
        # No reply topic at all: the answer goes to .../infer/response.
        default = Recorder().start(topics.infer_response)
        client.publish(topics.infer, b"not json", qos=1).wait_for_publish(5)
        error = default.wait_for(lambda m: True, what="default reply").json()
        default.stop()
    finally:
        client.disconnect()
        client.loop_stop()
        rec.stop()
    assert reply["status"] == "ok" and reply["correlation_id"] == "abc-1"
    assert reply["predictions"][0]["label"] == "ok"
    assert error["status"] == "error" and "not valid JSON" in error["error"]


def test_kill_9_leaves_lost_and_restart_counts_a_new_session(bundle: Path, tmp_path: Path) -> None:
    topics = DeviceTopics.create("edgeml", unique_id("fleet"), unique_id("dev"))
    args = ("--broker", BROKER, "--device-id", topics.device, "--fleet", topics.fleet,
            "--metrics-interval", "1", "--spool", str(tmp_path / "spool"))
    rec = Recorder().start(topics.everything())
    servers: list[Server] = []
    try:
        server = start_serve(bundle, *args)
        servers.append(server)
        rec.wait_for(lambda m: m.topic == topics.state and m.payload == b"ready", what="ready")
        first = rec.wait_for(lambda m: m.topic == topics.info, what="$info").json()
        seq1 = rec.wait_for(lambda m: m.topic == topics.metrics, what="metrics").json()["seq"]
        server.kill()  # SIGKILL: no goodbye, the broker publishes the will
        lost = rec.wait_for(lambda m: m.topic == topics.state and m.payload == b"lost",
                            timeout=10, what="$state lost (last will)")
        assert ("session", str(first["session"])) in lost.properties.UserProperty
        late = Recorder().start(topics.state)  # and it is retained
        assert late.wait_for(lambda m: True, what="retained $state").payload == b"lost"
        late.stop()

        server = start_serve(bundle, *args)
        servers.append(server)
        rec.wait_for(lambda m: m.topic == topics.state and m.payload == b"ready", what="ready again")
        second = rec.wait_for(lambda m: m.topic == topics.info, what="$info again").json()
        assert second["session"] == first["session"] + 1
        # seq is persisted: it goes on from where it was. A window whose PUBACK the killed
        # process never saw is sent again (at-least-once), but none is skipped.
        seqs = [seq1]
        while seqs[-1] <= seq1 + 1:
            m = rec.wait_for(lambda m: m.topic == topics.metrics, what="metrics").json()
            seqs.append(m["seq"])
            assert m["session"] in (first["session"], second["session"])
        assert sorted(set(seqs)) == list(range(seq1, seqs[-1] + 1))
        assert server.terminate() == 0
        rec.wait_for(lambda m: m.topic == topics.state and m.payload == b"disconnected",
                     what="$state disconnected after SIGTERM")
    finally:
        for srv in servers:
            if srv.proc.poll() is None:
                srv.kill()
        rec.stop()
        clear_retained(topics.root)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device-id", "Bad_Id"], "device id 'Bad_Id' is not valid"),
        (["--tls-ca", "ca.pem"], "TLS options need an mqtts:// broker URL"),
    ],
)
def test_bad_options_exit_2(bundle: Path, tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeml", "serve", str(bundle), "--broker", BROKER,
         "--spool", str(tmp_path / "s"), *args],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert f"error: {message}" in proc.stderr


def test_a_stale_lost_is_overwritten_with_ready(device: tuple[Server, DeviceTopics]) -> None:
    """An old session's will landing late (or any stale 'lost') does not stick while we are up."""
    _, topics = device
    rec = Recorder().start(topics.state)
    try:
        rec.wait_for(lambda m: m.payload == b"ready", what="retained ready")
        publish(topics.state, b"lost", retain=True)
        rec.wait_for(lambda m: m.payload == b"lost", what="the stale lost")
        healed = rec.wait_for(lambda m: m.payload == b"ready", what="ready again")
        assert healed.payload == b"ready"
    finally:
        rec.stop()
    late = Recorder().start(topics.state)
    assert late.wait_for(lambda m: True, what="retained $state").payload == b"ready"
    late.stop()


def test_without_broker_it_serves_http_only(bundle: Path) -> None:
    server = start_serve(bundle)
    try:
        status, body = http_predict(server.url, [GOOD_ROW])
        assert status == 200 and body["predictions"][0]["label"] == "ok"
    finally:
        assert server.terminate() == 0
    assert not any(line.startswith("mqtt:") for line in server.lines)


def test_sampler_keeps_the_asked_fraction_and_respects_the_cap(bundle: Path) -> None:
    from edgeml.runtime.predictor import Predictor
    from edgeml.runtime.sampling import Sampler

    predictor = Predictor(bundle)
    rows = [GOOD_ROW, {"temp": 70.0, "vibration": 0.9, "mode": "eco"}] * 500
    feeds = predictor.feeds(rows)
    prediction = predictor.run(feeds)
    sampler = Sampler(0.1, 10**9, capacity=10**6, seed=7)
    for _ in range(20):
        sampler(feeds, prediction, 0.001, "http")
    assert 1800 <= sampler.captured_total <= 2200  # 10 % of 20 000 rows
    capped = Sampler(1.0, 30, seed=7)
    for _ in range(50):
        capped(feeds, prediction, 0.001, "http")
    kept = capped.drain()
    assert len(kept) == 30  # the per-minute cap (bucket of 30)
    assert kept[0]["features"] == GOOD_ROW and kept[1]["features"]["mode"] == "eco"
    assert kept[1]["prediction"] == prediction.rows()[1]
    assert len({k["id"] for k in kept}) == 30
    # With its bucket empty it leaves the observer list (the hot path stops calling it)
    # until a token is due; the agent's tick puts it back.
    observers: list[object] = []
    paused = Sampler(1.0, 2, seed=7)
    paused.attach(observers)
    assert observers == [paused]
    paused(feeds, prediction, 0.001, "http")
    assert observers == [] and paused.captured_total == 2
    paused.refresh()
    assert observers == []  # next token in 30 s
    paused.detach()

