"""Simulated fleets end to end: simulator -> Mosquitto -> monitor -> store -> evaluator.

The simulator's devices run the bundle for real and publish with the runtime's payload
code; a real monitor (edgeml.fleet.monitor) stores what arrives; the evaluator is then run
at every simulated window end, as the monitor's periodic task would have been.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from _mqtt_support import unique_id
from fleet_support import PG_URL, fresh_store, make_fleet_bundle
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import func, select

from edgeml.errors import UsageError
from edgeml.fleet.evaluate import EvaluationConfig, evaluate
from edgeml.fleet.monitor import Monitor, MonitorSettings
from edgeml.fleet.schema import Alert, Feedback, MetricsWindow
from edgeml.fleet.simulate import DecaySpec, DriftSpec, simulate
from edgeml.fleet.thresholds import load_thresholds

BROKER = "mqtt://127.0.0.1:1883"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = make_fleet_bundle(tmp_path_factory.mktemp("fleet-bundle"))
    return path


def _clear_retained(base: str) -> None:
    """Remove the retained $state/$info the simulated devices left on the shared broker."""
    seen: list[str] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, ud, msg: seen.append(msg.topic) if msg.retain and msg.payload else None
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    c.subscribe(f"{base}/#", qos=1)
    time.sleep(0.5)
    for topic in set(seen):
        c.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def _run_through_monitor(store: Any, base: str, bundle: Path, **options: Any) -> Any:
    settings = MonitorSettings(broker=BROKER, base_topic=base, group=unique_id("g"),
                               client_id=unique_id("mon"), session_expiry=30)
    monitor = Monitor(settings, store=store)
    monitor.start()
    try:
        assert monitor.wait_subscribed(15)
        report = simulate(bundle, broker=BROKER, base_topic=base, **options)
        deadline = time.monotonic() + 120
        while True:  # every window the simulator sent is stored before anything is judged
            with store.session() as s:
                stored = s.execute(select(func.count()).select_from(MetricsWindow)).scalar_one()
                labels = s.execute(select(func.count()).select_from(Feedback)).scalar_one()
            if (stored, labels) == (report.windows, report.feedback) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (stored, labels) == (report.windows, report.feedback)
    finally:
        monitor.stop()
        _clear_retained(base)
    return report


def _evaluate_each_window(store: Any, report: Any, config: EvaluationConfig) -> list[Any]:
    results = []
    for t in report.window_ends:
        with store.session() as s:
            results.append(evaluate(s, datetime.fromtimestamp(t, timezone.utc), config))
    return results


def _alerts(store: Any) -> list[Any]:
    with store.session() as s:
        return list(s.execute(select(Alert.__table__)).all())


def _config(tmp_path: Path, window: str) -> EvaluationConfig:
    path = tmp_path / "thresholds.yaml"
    path.write_text(f"window: {window}\n", encoding="utf-8")
    return EvaluationConfig(load_thresholds(path))


def test_drift_on_a_tenth_of_200_devices_is_flagged_on_exactly_those(
        bundle: Path, tmp_path: Path) -> None:
    base = unique_id("simdrift")
    interval, start_drift = 30.0, 120.0
    with fresh_store("sqlite", tmp_path) as store:
        report = _run_through_monitor(
            store, base, bundle, devices=200, interval=interval, rate=6.0, batch=10,
            duration=600.0, feedback_rate=0.005, seed=7,
            drift=[DriftSpec.parse(f"feature=temp,shift=+12,from={start_drift:g},fraction=0.1")])
        assert len(report.drifted) == 20 and report.windows == 200 * 20
        results = _evaluate_each_window(store, report, _config(tmp_path, "120s"))
        alerts = _alerts(store)
    drifted = set(report.drifted)
    device_alerts = [a for a in alerts if a.device is not None]
    # flagged on exactly the drifted devices, each within 3 windows of the drift's start
    assert {a.device for a in device_alerts} == drifted
    deadline = report.start + start_drift + 3 * interval
    first = {d: min(a.opened_at for a in device_alerts if a.device == d) for d in drifted}
    assert all(t.timestamp() <= deadline + 1e-6 for t in first.values()), first
    assert all(t.timestamp() > report.start + start_drift for t in first.values())
    # nothing else alarms: device alerts are drift on temp (or what the shift implies: the
    # predictions, values beyond the training range); fleet-wide ones only concern temp
    assert {a.kind for a in device_alerts} <= {"drift", "out_of_range"}
    assert {a.feature for a in device_alerts} <= {"temp", "prediction"}
    assert "temp" in {a.feature for a in device_alerts}
    assert all(a.feature in ("temp", "prediction") for a in alerts if a.device is None)
    # before the drift began, nothing at all was open
    early = [r for r in results if r.now.timestamp() <= report.start + start_drift]
    assert early and all(r.open_alerts == 0 for r in early)
    # the evaluator saw every device, and the estimated accuracy sits beside the holdout's
    last = results[-1]
    assert len(last.drift.sums[("toy-fleet", 1)].devices) == 200
    est = last.estimated[(None, None, "toy-fleet", 1)]
    assert 0.5 < est <= 1.0


def test_label_decay_is_flagged_from_feedback(bundle: Path, tmp_path: Path) -> None:
    base = unique_id("simdecay")
    with fresh_store("sqlite", tmp_path) as store:
        report = _run_through_monitor(
            store, base, bundle, devices=20, interval=10.0, rate=10.0, batch=10, duration=300.0,
            feedback_rate=0.05, seed=3,
            decay=[DecaySpec.parse("accuracy=0.3,from=120,fraction=0.25")])
        results = _evaluate_each_window(store, report, _config(tmp_path, "120s"))
        alerts = _alerts(store)
    decayed = set(report.decayed)
    assert len(decayed) == 5
    decay = [a for a in alerts if a.kind == "decay"]
    assert {a.device for a in decay if a.device is not None} == decayed
    assert all(a.feature == "accuracy" and a.value < a.threshold for a in decay)
    assert all(a.opened_at.timestamp() > report.start + 120 for a in decay), [
        (a.device, a.opened_at.timestamp() - report.start, a.message) for a in decay]
    assert not [a for a in alerts if a.kind != "decay"]
    scores = {(s.fleet, s.device): s for s in results[-1].labelled}
    healthy = next(s for (f, d), s in scores.items() if d is not None and d not in decayed)
    sick = next(s for (f, d), s in scores.items() if d in decayed)
    assert sick.accuracy_high is not None and sick.accuracy_high < healthy.accuracy  # type: ignore[operator]


def test_drift_through_postgresql(bundle: Path, tmp_path: Path) -> None:
    base = unique_id("simpg")
    with fresh_store(PG_URL, tmp_path) as store:
        report = _run_through_monitor(
            store, base, bundle, devices=30, interval=10.0, rate=10.0, batch=10, duration=240.0,
            feedback_rate=0.01, seed=11,
            drift=[DriftSpec.parse("feature=pressure,shift=+25,from=60,fraction=0.2")])
        _evaluate_each_window(store, report, _config(tmp_path, "60s"))
        alerts = _alerts(store)
    assert {a.device for a in alerts if a.device is not None} == set(report.drifted)
    assert "pressure" in {a.feature for a in alerts if a.device is not None}


def test_simulator_payloads_are_the_runtimes(bundle: Path) -> None:
    base = unique_id("simraw")
    got: list[mqtt.MQTTMessage] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, ud, msg: got.append(msg)
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    c.subscribe(f"{base}/#", options=SubscribeOptions(qos=1, retainAsPublished=True))
    time.sleep(0.3)
    try:
        report = simulate(bundle, broker=BROKER, base_topic=base, devices=3, interval=5.0,
                          rate=4.0, duration=20.0, restart_rate=0.25, seed=5, feedback_rate=0.1)
        time.sleep(1.0)
    finally:
        c.disconnect()
        c.loop_stop()
        _clear_retained(base)
    metrics = [json.loads(m.payload) for m in got if m.topic.endswith("/metrics")]
    assert len(metrics) == report.windows == 12
    assert {m["schema"] for m in metrics} == {"edgeml.metrics/2"}
    assert sum(m["rows"] for m in metrics) == report.rows
    states = [m for m in got if m.topic.endswith("/$state")]
    assert all(m.retain for m in states) and states[-1].payload == b"disconnected"
    sessions = {(m.topic, dict(m.properties.UserProperty)["session"])  # type: ignore[union-attr]
                for m in states}
    assert len(sessions) == 3 + report.restarts > 3  # a restart announces a new session
    infos = [json.loads(m.payload) for m in got if m.topic.endswith("/$info")]
    assert {i["schema"] for i in infos} == {"edgeml.info/2"} and infos[0]["reference"]["inputs"]
    # a window's seq keeps counting across restarts, as the runtime's spool counter does
    by_device: dict[str, list[int]] = {}
    for m in metrics:
        by_device.setdefault(m["device"], []).append(m["seq"])
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_device.values())


@pytest.mark.parametrize("spec, message", [
    ("feature=temp", "give shift=, scale= or swap="),
    ("shift=1", "feature= is required"),
    ("feature=temp,shift=x", "shift='x' is not a number"),
    ("feature=temp,shift=1,fraction=2", "fraction=2.0 must be between 0 and 1"),
    ("feature=temp,speed=1", "unknown key 'speed'"),
])
def test_drift_spec_errors_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DriftSpec.parse(spec)


def test_drift_spec_is_checked_against_the_bundle(bundle: Path) -> None:
    with pytest.raises(UsageError, match="'nope' is not an input of toy-fleet@1"):
        simulate(bundle, broker=BROKER, devices=1, drift=[DriftSpec.parse("feature=nope,shift=1")])
    with pytest.raises(UsageError, match="swap= needs a categorical feature"):
        simulate(bundle, broker=BROKER, devices=1, drift=[DriftSpec.parse("feature=temp,swap=a:b")])


def test_a_disconnected_device_says_lost_and_delivers_its_windows_late(bundle: Path) -> None:
    base = unique_id("simoff")
    got: list[mqtt.MQTTMessage] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, ud, msg: got.append(msg)
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    c.subscribe(f"{base}/#", qos=1)
    time.sleep(0.3)
    try:
        report = simulate(bundle, broker=BROKER, base_topic=base, devices=3, interval=5.0,
                          rate=2.0, duration=100.0, disconnect_rate=0.2, seed=9,
                          feedback_rate=0.0)
        time.sleep(1.0)
    finally:
        c.disconnect()
        c.loop_stop()
        _clear_retained(base)
    assert report.disconnects > 0
    states = [m.payload for m in got if m.topic.endswith("/$state")]
    assert states.count(b"lost") == report.disconnects
    # every window arrives once, some of them late (after later ones of other devices)
    seqs: dict[str, list[int]] = {}
    for m in got:
        if m.topic.endswith("/metrics"):
            body = json.loads(m.payload)
            seqs.setdefault(body["device"], []).append(body["seq"])
    assert sum(len(v) for v in seqs.values()) == report.windows == 60
    assert all(sorted(v) == list(range(1, 21)) for v in seqs.values())


def test_csv_inputs_keep_whole_rows_and_name_a_missing_column(bundle: Path, tmp_path: Path) -> None:
    from edgeml.fleet.simspec import CsvSampler
    from edgeml.runtime.predictor import Predictor

    manifest = Predictor(bundle).manifest
    good = tmp_path / "rows.csv"
    good.write_text("temp,pressure,color,extra\n10.5,990,red,x\n30,1010,blue,y\n,1000,,z\n",
                    encoding="utf-8")
    cols = CsvSampler(good, manifest).sample(50, np.random.default_rng(0))
    pairs = set(zip(cols["temp"].tolist(), cols["color"].tolist(), strict=True))
    assert pairs <= {(10.5, "red"), (30.0, "blue")} | {p for p in pairs if p[1] == ""}
    assert any(np.isnan(t) for t, c in pairs if c == "")  # an empty cell is a missing value
    bad = tmp_path / "bad.csv"
    bad.write_text("temp,color\n1,red\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"has no column 'pressure'"):
        CsvSampler(bad, manifest)


def test_the_cli_runs_a_fleet_and_refuses_a_bad_spec(bundle: Path) -> None:
    import subprocess
    import sys

    base = unique_id("simcli")
    args = [sys.executable, "-m", "edgeml", "simulate", "--broker", BROKER, "--bundle", str(bundle),
            "--devices", "2", "--duration", "20", "--interval", "10", "--speed", "0",
            "--base-topic", base]
    try:
        ok = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=120)
    finally:
        _clear_retained(base)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["windows"] == 4
    bad = subprocess.run([*args, "--drift", "feature=temp"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --drift 'feature=temp': give shift=, scale= or swap="
