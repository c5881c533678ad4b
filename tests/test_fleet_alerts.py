"""Alerts: opened once per key, resolved when the condition clears, published on MQTT, and
exposed as gauges on the monitor's /metrics."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from _mqtt_support import unique_id
from fleet_support import T0, Fleet, fresh_store, make_fleet_bundle
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from edgeml.fleet.evaluate import EvaluationConfig, evaluate
from edgeml.fleet.schema import Alert
from edgeml.fleet.simspec import DriftSpec
from edgeml.fleet.thresholds import load_thresholds
from edgeml.runtime.predictor import Predictor
from edgeml.runtime.topics import alert_topic, alerts_filter

SHIFT = DriftSpec.parse("feature=temp,shift=+15")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    path, _ = make_fleet_bundle(tmp_path_factory.mktemp("alerts-bundle"))
    return Predictor(path)


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def _config(tmp_path: Path, publish: Any = None, extra: str = "") -> EvaluationConfig:
    path = tmp_path / "th.yaml"
    path.write_text("window: 30s\n" + extra, encoding="utf-8")
    return EvaluationConfig(load_thresholds(path), base_topic="edgeml", publish=publish)


def _rows(store: Any) -> list[Any]:
    with store.session() as s:
        return list(s.execute(select(Alert.__table__).order_by(Alert.__table__.c.id)).all())


def test_a_drift_alert_opens_once_and_resolves_when_the_drift_is_gone(
        predictor: Predictor, tmp_path: Path) -> None:
    published: list[tuple[str, dict[str, Any]]] = []
    config = _config(tmp_path, lambda topic, body: published.append((topic, json.loads(body))))
    with fresh_store("sqlite", tmp_path) as store:
        fleet = Fleet(store, predictor)
        fleet.announce("d1")
        fleet.announce("d2")
        for k in range(1, 13):  # d1 drifts during windows 1-6, then is back to normal
            fleet.window("d1", T0 + 10 * k, 150, drift=SHIFT if k <= 6 else None)
            fleet.window("d2", T0 + 10 * k, 150)
        opened_at = []
        for k in range(1, 13):
            with store.session() as s:
                r = evaluate(s, _at(T0 + 10 * k), config)
            opened_at += [a.opened_at for a in r.opened]
        rows = _rows(store)
    temp = [a for a in rows if a.feature == "temp" and a.device == "d1" and a.kind == "drift"]
    assert len(temp) == 1  # one alert, kept open while the drift lasted
    assert temp[0].opened_at == _at(T0 + 20)  # min_rows (200) reached at the second window
    assert temp[0].resolved_at is not None and temp[0].resolved_at > _at(T0 + 60)
    assert not [a for a in rows if a.device == "d2"]
    assert all(a.resolved_at is not None for a in rows)
    opened = [(t, b) for t, b in published if b["state"] == "open" and b["feature"] == "temp"
              and b["device"] == "d1"]
    assert opened and opened[0][0] == alert_topic("edgeml", "plant", "d1")
    body = opened[0][1]
    assert body["schema"] == "edgeml.alert/1" and body["kind"] == "drift"
    assert body["model"] == {"name": "toy-fleet", "version": 1} and body["value"] > 0.25
    assert any(b["state"] == "resolved" and b["id"] == body["id"] for _, b in published)


def test_health_alerts_each_name_their_device(predictor: Predictor, tmp_path: Path) -> None:
    config = _config(tmp_path, extra="defaults:\n  health:\n    p95_ms: 50\n    min_requests: 5\n")
    with fresh_store("sqlite", tmp_path) as store:
        fleet = Fleet(store, predictor)
        for d in ("ok", "silent", "errors", "slow", "gaps", "drops", "gone"):
            fleet.announce(d)
        for k in (1, 2, 3):
            t = T0 + 10 * k
            fleet.window("ok", t, 10)
            fleet.window("errors", t, 10, errors=5)
            fleet.window("slow", t, 10, latency=0.2)
            fleet.window("gaps", t, 10, seq=2 * k)
            fleet.window("drops", t, 10, dropped=3 * k)
            fleet.window("gone", t, 10)
        fleet.window("silent", T0 + 10, 10)
        fleet.state("gone", "lost")
        with store.session() as s:
            result = evaluate(s, _at(T0 + 45), config)
        got = {(c.kind, c.device) for c in result.conditions}
        assert got == {("device_silent", "silent"), ("error_rate", "errors"),
                       ("latency_p95", "slow"), ("lost_windows", "gaps"), ("spool_drops", "drops"),
                       ("device_lost", "gone")}
        fleet.window("silent", T0 + 50, 10)  # it is back
        with store.session() as s:
            later = evaluate(s, _at(T0 + 50), config)
    assert ("device_silent", "silent") not in {(c.kind, c.device) for c in later.conditions}
    assert ("device_silent", "silent") in [(a.kind, a.device) for a in later.resolved]
    gaps = next(c for c in result.conditions if c.kind == "lost_windows")
    assert gaps.value == 1.0  # seq 4 and 6 in the window: seq 5 is missing
    slow = next(c for c in result.conditions if c.kind == "latency_p95")
    assert slow.value == pytest.approx(200.0) and "p95 latency 200.0 ms" in slow.message


def test_gauges_render_on_the_monitor_registry(predictor: Predictor, tmp_path: Path) -> None:
    with fresh_store("sqlite", tmp_path) as store:
        fleet = Fleet(store, predictor)
        fleet.announce("d1")
        for k in (1, 2, 3):
            fleet.window("d1", T0 + 10 * k, 150, drift=SHIFT)
        with store.session() as s:
            result = evaluate(s, _at(T0 + 30), _config(tmp_path))
    gauges = {(g.name, tuple(sorted(g.labels.items()))): g.value for g in result.gauges()}
    assert gauges[("edgeml_fleet_alerts_open", ())] == result.open_alerts > 0
    worst = [k for k in gauges if k[0] == "edgeml_fleet_device_drift_worst"]
    assert worst and dict(worst[0][1])["device"] == "d1"
    est = gauges[("edgeml_fleet_accuracy_estimated", (("model", "toy-fleet"), ("version", "1")))]
    assert 0.0 < est <= 1.0
    assert gauges[("edgeml_fleet_conditions", (("kind", "drift"),))] >= 1


def test_the_monitor_runs_the_evaluator_and_publishes_alerts(predictor: Predictor,
                                                             tmp_path: Path) -> None:
    from edgeml.fleet.monitor import Monitor, MonitorSettings
    from edgeml.fleet.simulate import simulate

    base = unique_id("alerts")
    received: list[mqtt.MQTTMessage] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda cl, ud, msg: received.append(msg)
    sub.connect("127.0.0.1", 1883)
    sub.loop_start()
    sub.subscribe(alerts_filter(base), qos=1)
    th = tmp_path / "th.yaml"
    th.write_text("window: 1h\nmin_rows: 100\n", encoding="utf-8")
    with fresh_store("sqlite", tmp_path) as store:
        monitor = Monitor(MonitorSettings(broker="mqtt://127.0.0.1:1883", base_topic=base,
                                          group=unique_id("g"), client_id=unique_id("mon"),
                                          session_expiry=30, http_port=0, evaluate_every=1.0,
                                          thresholds=str(th)), store=store)
        monitor.start()
        try:
            assert monitor.wait_subscribed(15)
            simulate(predictor.bundle.path, broker="mqtt://127.0.0.1:1883", base_topic=base,
                     devices=4, interval=10.0, rate=10.0, batch=10, duration=60.0,
                     start=time.time() - 61.0, seed=2,
                     drift=[DriftSpec.parse("feature=pressure,shift=+40,fraction=0.25")])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not received:
                time.sleep(0.2)
            assert monitor.http is not None
            with urllib.request.urlopen(monitor.http.url + "/metrics", timeout=5) as resp:
                text = resp.read().decode()
        finally:
            monitor.stop()
            sub.disconnect()
            sub.loop_stop()
    bodies = [json.loads(m.payload) for m in received]
    assert bodies and all(b["schema"] == "edgeml.alert/1" for b in bodies)
    drifted = {b["device"] for b in bodies if b["kind"] == "drift" and b["device"]}
    assert len(drifted) == 1 and {"pressure"} <= {b["feature"] for b in bodies}
    assert "edgeml_fleet_alerts_open" in text and "edgeml_fleet_device_drift_worst" in text


def test_alerts_of_a_version_the_device_no_longer_serves_are_resolved(
        predictor: Predictor, tmp_path: Path) -> None:
    """After a deploy (or a rollback) an alert about the old version resolves as superseded;
    the other device's alert about the version it still serves stays open."""
    v2_path, _ = make_fleet_bundle(tmp_path / "v2", version=2)
    config = _config(tmp_path)
    with fresh_store("sqlite", tmp_path) as store:
        fleet = Fleet(store, predictor)
        for d in ("d1", "d2"):
            fleet.announce(d)
            for k in (1, 2, 3):
                fleet.window(d, T0 + 10 * k, 150, drift=SHIFT)
        with store.session() as s:
            evaluate(s, _at(T0 + 30), config)
        before = [a for a in _rows(store) if a.kind == "drift" and a.feature == "temp"]
        assert {a.device for a in before if a.resolved_at is None} == {"d1", "d2", None}
        Fleet(store, Predictor(v2_path)).announce("d1", now=T0 + 35)  # d1 now serves v2
        with store.session() as s:
            r = evaluate(s, _at(T0 + 40), config)
        with store.session() as s:  # d1's v1 windows are still in the window: not reopened
            again = evaluate(s, _at(T0 + 45), config)
        after = {a.id: a for a in _rows(store)}
        assert not [c for c in again.opened if c.device == "d1"]
        assert not [a for a in after.values() if a.device == "d1" and a.resolved_at is None]
    d1 = [after[a.id] for a in before if a.device == "d1"]
    d2 = [after[a.id] for a in before if a.device in ("d2", None)]  # and the fleet's: d2 runs v1
    assert d1 and all(a.resolved_at == _at(T0 + 40) for a in d1)
    assert len(d2) >= 2 and all(a.resolved_at is None for a in d2)
    assert {c.device for c in r.resolved if c.feature == "temp"} == {"d1"}
