"""The embedded broker (amqtt, MQTT 3.1.1): pub/sub, ``edgeml broker``, serve telemetry through it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from _mqtt_support import (
    GOOD_ROW,
    Recorder,
    free_port,
    http_predict,
    make_bundle,
    publish,
    start_serve,
    unique_id,
)

from edgeml.errors import RuntimeServiceError
from edgeml.runtime.broker import EmbeddedBroker
from edgeml.runtime.mqtt_client import BrokerSettings, probe_protocol
from edgeml.runtime.topics import DeviceTopics

V311 = mqtt.MQTTv311


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker("127.0.0.1", free_port())
    b.start()
    yield b
    b.stop()


def test_publish_subscribe_and_retained(broker: EmbeddedBroker) -> None:
    rec = Recorder(port=broker.port, protocol=V311).start("demo/#")
    publish("demo/a", b"hello", port=broker.port, protocol=V311)
    assert rec.wait_for(lambda m: m.topic == "demo/a").payload == b"hello"
    publish("demo/kept", b"retained", port=broker.port, protocol=V311, retain=True)
    rec.stop()
    # A retained message reaches a subscriber that arrives later.
    late = Recorder(port=broker.port, protocol=V311).start("demo/kept")
    assert late.wait_for(lambda m: True).payload == b"retained"
    late.stop()


def test_devices_detect_that_it_speaks_311(broker: EmbeddedBroker) -> None:
    assert probe_protocol(BrokerSettings.from_url(broker.url), "probe") == V311
    shared = BrokerSettings.from_url("mqtt://127.0.0.1:1883")
    assert probe_protocol(shared, unique_id("probe")) == mqtt.MQTTv5


def test_port_in_use_is_a_clear_error(broker: EmbeddedBroker) -> None:
    with pytest.raises(RuntimeServiceError, match=f"cannot listen on 127.0.0.1:{broker.port}"):
        EmbeddedBroker("127.0.0.1", broker.port).start()


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "amqtt.broker", None)  # as if edgeml[broker] were not installed
    with pytest.raises(RuntimeServiceError, match=r"pip install 'edgeml\[broker\]'"):
        EmbeddedBroker("127.0.0.1", free_port()).start()


def test_broker_command(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeml", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"broker: mqtt://127.0.0.1:{port}")
        rec = Recorder(port=port, protocol=V311).start("x/#")
        publish("x/y", b"1", port=port, protocol=V311)
        assert rec.wait_for(lambda m: True).payload == b"1"
        rec.stop()
        second = subprocess.run([sys.executable, "-m", "edgeml", "broker", "--port", str(port)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"error: embedded broker cannot listen on 127.0.0.1:{port}" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert code == 0


def test_serve_telemetry_through_the_embedded_broker(broker: EmbeddedBroker, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    topics = DeviceTopics.create("edgeml", "demo", unique_id("dev"))
    rec = Recorder(port=broker.port, protocol=V311).start(topics.everything(), "replies/#")
    server = start_serve(
        bundle, "--broker", broker.url, "--device-id", topics.device, "--fleet", topics.fleet,
        "--metrics-interval", "1", "--spool", str(tmp_path / "spool"),
    )
    try:
        rec.wait_for(lambda m: m.topic == topics.state and m.payload == b"ready", what="ready")
        info = rec.wait_for(lambda m: m.topic == topics.info, what="$info").json()
        assert info["mqtt"]["protocol"] == "3.1.1"
        assert http_predict(server.url, [GOOD_ROW])[0] == 200
        metrics = rec.wait_for(lambda m: m.topic == topics.metrics and m.json()["rows"] == 1,
                               what="metrics with the prediction").json()
        assert metrics["predictions"]["counts"] == {"ok": 1}
        # 3.1.1 has no response topic or correlation data: the body carries them.
        body = {"instances": [GOOD_ROW], "reply_to": "replies/1", "correlation_id": 7}
        publish(topics.infer, json.dumps(body), port=broker.port, protocol=V311)
        reply = rec.wait_for(lambda m: m.topic == "replies/1", what="reply").json()
        assert reply["status"] == "ok" and reply["correlation_id"] == 7
        server.kill()
        lost = rec.wait_for(lambda m: m.topic == topics.state and m.payload == b"lost",
                            what="last will through amqtt")
        assert lost.payload == b"lost"
    finally:
        if server.proc.poll() is None:
            server.kill()
        rec.stop()
    time.sleep(0.1)
