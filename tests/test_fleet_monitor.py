"""``edgeml monitor`` end to end: a real ``edgeml serve`` and real monitors, brokers and
databases (SQLite and PostgreSQL); kill -9 under load; two monitors in one group;
malformed payloads. ``edgeml fleet devices --json`` is what the user sees.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _fleet_support import (
    MonitorProcess,
    Publisher,
    Windows,
    count_rows,
    edgeml_json,
    info_payload,
    manifest_of,
    private_broker,
    scrape,
    session_properties,
    start_monitor,
    store_url,
    wait_until,
)
from _mqtt_support import GOOD_ROW, clear_retained, http_predict, make_bundle, start_serve

from edgeml.fleet.db import open_store
from edgeml.fleet.migrate import upgrade
from edgeml.fleet.views import devices_table
from edgeml.runtime.topics import DeviceTopics

SHARED_BROKER = "mqtt://127.0.0.1:1883"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_url(request.param, tmp_path) as url:
        upgrade(url)
        yield url


def _base() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_shared_filter_is_built_in_topics() -> None:
    from edgeml.errors import UsageError
    from edgeml.runtime.topics import all_devices_filter, shared_filter

    assert shared_filter("fleet-a", all_devices_filter("edgeml", "metrics")) == \
        "$share/fleet-a/edgeml/+/+/metrics"
    for bad in ("", "a/b", "a+", "#", "x" * 65):
        with pytest.raises(UsageError, match="group"):
            shared_filter(bad, "edgeml/#")


def _monitors_stop(*monitors: MonitorProcess) -> None:
    for m in monitors:
        if m.proc.poll() is None:
            m.terminate()


def test_serve_telemetry_reaches_fleet_devices(bundle: Path, db: str, tmp_path: Path) -> None:
    base = _base()
    topics = DeviceTopics.create(base, "lab", "pi-1")
    monitor = start_monitor(SHARED_BROKER, db, base, f"mon-{uuid.uuid4().hex[:8]}",
                            "--evaluate-every", "1")
    server = start_serve(bundle, "--broker", SHARED_BROKER, "--base-topic", base,
                         "--fleet", "lab", "--device-id", "pi-1", "--metrics-interval", "1",
                         "--spool", str(tmp_path / "spool"))
    try:
        sent = 0
        for _ in range(4):
            status, _ = http_predict(server.url, [GOOD_ROW])
            assert status == 200
            sent += 1
        status, _ = http_predict(server.url, [GOOD_ROW, GOOD_ROW, GOOD_ROW])
        assert status == 200
        sent += 1  # one request of three rows

        store = open_store(db)
        try:
            wait_until(lambda: [r["requests"] for r in devices_table(store)] == [sent], 30,
                       f"{sent} requests in the store", 0.5)
        finally:
            store.dispose()
        (row,) = edgeml_json("fleet", "devices", "--db", db)
        assert (row["fleet"], row["device"], row["state"]) == ("lab", "pi-1", "ready")
        assert (row["model"], row["requests"], row["lost_windows"]) == ("pump@1", sent, 0)
        assert row["windows"] >= 1 and row["last_seen"].endswith("Z")
        detail = edgeml_json("fleet", "device", "pi-1", "--db", db)
        assert detail["sessions"][0]["session"] == row["session"]
        metrics = scrape(str(monitor.metrics_url))
        assert metrics['edgeml_monitor_stored_total{kind="$info"}'] >= 1
        assert metrics["edgeml_monitor_db_up"] == 1
        # --evaluate-every: the evaluator's gauges join the monitor's own on /metrics
        wait_until(lambda: "edgeml_fleet_alerts_open" in scrape(str(monitor.metrics_url)), 15,
                   "the evaluator's gauges")
        assert "Traceback" not in monitor.output()
    finally:
        server.terminate()
        _monitors_stop(monitor)
        clear_retained(topics.root)


@pytest.fixture(scope="module")
def sqlite_monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, MonitorProcess]]:
    """(db, base topic, monitor) on the shared broker, for tests that need no kill."""
    db = f"sqlite:///{tmp_path_factory.mktemp('db') / 'fleet.db'}"
    upgrade(db)
    base = _base()
    monitor = start_monitor(SHARED_BROKER, db, base, f"mon-{uuid.uuid4().hex[:8]}")
    yield db, base, monitor
    _monitors_stop(monitor)


def test_malformed_payloads_are_quarantined_and_ingest_continues(
        bundle: Path, sqlite_monitor: tuple[str, str, MonitorProcess]) -> None:
    db, base, monitor = sqlite_monitor
    w = Windows(manifest_of(bundle), base, "lab", "pi-2")
    pub = Publisher(1883)
    try:
        garbage = {
            "not-json": b"{{{",
            "not-object": b'"a string"',
            "unknown-schema": w.payload(1).replace(b"edgeml.metrics/", b"edgeml.metrics/9"),
            "missing-field": b'{"schema": "edgeml.metrics/1", "session": 1}',
            "wrong-type": w.payload(2).replace(b'"seq":2', b'"seq":"two"'),
            "too-large": b"[" + b"0," * 200_000 + b"0]",
        }
        for body in garbage.values():
            pub.send(w.topic, body)
        pub.send(w.topics.samples, b"\xff\xfe")
        pub.send(w.topic, w.payload(3, requests=5))
        pub.wait()
        wait_until(lambda: count_rows(db, "metrics_windows") == 1, 20, "the good window")
        wait_until(lambda: count_rows(db, "quarantine") == len(garbage) + 1, 20, "quarantine")
        metrics = scrape(str(monitor.metrics_url))
        for reason in garbage:
            assert metrics[f'edgeml_monitor_quarantined_total{{reason="{reason}"}}'] >= 1, reason
        assert metrics['edgeml_monitor_quarantined_total{reason="not-json"}'] == 2
        status = edgeml_json("fleet", "status", "--db", db)
        assert status["quarantined"] == {**dict.fromkeys(garbage, 1), "not-json": 2}
        assert monitor.proc.poll() is None  # still running
    finally:
        pub.close()


def test_repeated_windows_gaps_and_a_stale_will_through_the_monitor(
        bundle: Path, sqlite_monitor: tuple[str, str, MonitorProcess]) -> None:
    db, base, monitor = sqlite_monitor
    w = Windows(manifest_of(bundle), base, "lab", "pi-3", session=5)
    windows = {seq: w.payload(seq, requests=2) for seq in (1, 2, 5)}  # 3 and 4 lost
    pub = Publisher(1883)
    try:
        pub.send(w.topics.info, info_payload(w, session=5))
        pub.send(w.topics.state, b"ready", properties=session_properties(5))
        for seq in (1, 2, 2, 1, 5):  # the same windows twice, as a redelivery would
            pub.send(w.topic, windows[seq])
        pub.send(w.topics.state, b"lost", properties=session_properties(4))  # an old will
        pub.wait()
        store = open_store(db)
        try:
            wait_until(lambda: [r["windows"] for r in devices_table(store)
                                if r["device"] == "pi-3"] == [3], 20, "pi-3's windows")
            wait_until(lambda: scrape(str(monitor.metrics_url)).get(
                "edgeml_monitor_stale_states_total", 0) >= 1, 20, "the stale will")
            (row,) = [r for r in devices_table(store) if r["device"] == "pi-3"]
        finally:
            store.dispose()
        assert (row["state"], row["session"], row["model"]) == ("ready", 5, "pump@1")
        assert (row["windows"], row["requests"], row["lost_windows"]) == (3, 6, 2)
        metrics = scrape(str(monitor.metrics_url))
        assert metrics['edgeml_monitor_duplicates_total{kind="metrics"}'] >= 2
    finally:
        pub.close()
        clear_retained(w.topics.root)


def _load(bundle: Path, base: str, devices: int, windows: int) -> list[tuple[str, bytes]]:
    manifest = manifest_of(bundle)
    per_device = [Windows(manifest, base, "load", f"dev-{i:03d}") for i in range(devices)]
    return [(w.topic, w.payload(seq, requests=1)) for seq in range(1, windows + 1)
            for w in per_device]


def _publish_in_background(port: int, messages: list[tuple[str, bytes]],
                           rate: float) -> threading.Thread:
    def run() -> None:
        pub = Publisher(port)
        start = time.monotonic()
        for i, (topic, body) in enumerate(messages):
            pub.send(topic, body)
            ahead = i / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        pub.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_kill_9_under_load_loses_nothing_and_stores_each_window_once(
        bundle: Path, db: str, tmp_path: Path) -> None:
    base = _base()
    messages = _load(bundle, base, devices=40, windows=50)  # 2,000 windows
    with private_broker(tmp_path) as port:
        broker = f"mqtt://127.0.0.1:{port}"
        monitor = start_monitor(broker, db, base, "mon-kill", "--batch-size", "200")
        publisher = _publish_in_background(port, messages, rate=400.0)
        try:
            for fraction in (0.2, 0.5):
                wait_until(lambda f=fraction: count_rows(db, "metrics_windows") >= f * len(messages),
                           60, f"{fraction:.0%} of the windows")
                monitor.kill()
                time.sleep(0.5)  # the publisher keeps going: the broker queues for the session
                monitor = start_monitor(broker, db, base, "mon-kill", "--batch-size", "200")
            publisher.join(timeout=120)
            wait_until(lambda: count_rows(db, "metrics_windows") >= len(messages), 60,
                       "every window")
            time.sleep(1.0)  # any redelivery still in flight
        finally:
            _monitors_stop(monitor)
    assert count_rows(db, "metrics_windows") == len(messages)
    status = edgeml_json("fleet", "status", "--db", db, "--since", "1d")
    assert (status["windows"], status["requests"], status["lost_windows"]) == (
        len(messages), len(messages), 0)


def test_two_monitors_in_one_group_split_the_fleet(bundle: Path, tmp_path: Path) -> None:
    with store_url("postgresql", tmp_path) as db:
        upgrade(db)
        base = _base()
        messages = _load(bundle, base, devices=20, windows=100)  # 2,000 windows
        with private_broker(tmp_path) as port:
            broker = f"mqtt://127.0.0.1:{port}"
            a = start_monitor(broker, db, base, "mon-a", "--group", "split")
            b = start_monitor(broker, db, base, "mon-b", "--group", "split")
            try:
                _publish_in_background(port, messages, rate=2000.0).join(timeout=120)
                wait_until(lambda: count_rows(db, "metrics_windows") >= len(messages), 60,
                           "every window")
                stored = [scrape(str(m.metrics_url)).get(
                    'edgeml_monitor_stored_total{kind="metrics"}', 0.0) for m in (a, b)]
            finally:
                _monitors_stop(a, b)
        assert count_rows(db, "metrics_windows") == len(messages)
        assert sum(stored) == len(messages) and min(stored) > 0.2 * len(messages), stored
