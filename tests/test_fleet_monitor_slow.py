"""Slow scenarios (``make test-slow``): 1,000 simulated devices into PostgreSQL with the
monitor killed twice, and a private PostgreSQL stopped for 20 s under load."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from _fleet_support import (
    PrivatePostgres,
    count_rows,
    edgeml_json,
    pg_database,
    private_broker,
    scrape,
    start_monitor,
    wait_until,
)
from _mqtt_support import make_bundle
from test_fleet_monitor import _load, _publish_in_background

from edgeml.fleet.migrate import upgrade

pytestmark = pytest.mark.slow


def test_1000_simulated_devices_for_60_s_monitor_killed_twice(tmp_path: Path) -> None:
    from edgeml.fleet.simulate import Simulator

    bundle = make_bundle(tmp_path / "bundle")
    base = f"sim-{uuid.uuid4().hex[:8]}"
    with pg_database() as db, private_broker(tmp_path) as port:
        upgrade(db)
        broker = f"mqtt://127.0.0.1:{port}"
        sim = Simulator(bundle, broker=broker, devices=1000, base_topic=base, fleet="sim",
                        interval=10.0, rate=0.2, duration=60.0, speed=1.0, feedback_rate=0.0)
        monitor = start_monitor(broker, db, base, "mon-sim")
        result: dict[str, object] = {}
        runner = threading.Thread(target=lambda: result.update(report=sim.run()), daemon=True)
        runner.start()
        try:
            for at in (20.0, 40.0):
                wait_until(lambda at=at: time.time() - sim.t0 >= at, 90, f"{at:.0f} s simulated")
                monitor.kill()
                time.sleep(2.0)
                monitor = start_monitor(broker, db, base, "mon-sim")
            runner.join(timeout=180)
            report = result["report"]
            sent = report.windows  # type: ignore[attr-defined]
            assert sent >= 1000 * 5
            wait_until(lambda: count_rows(db, "metrics_windows") >= sent, 120, "every window")
            time.sleep(2.0)
        finally:
            monitor.terminate()
        assert count_rows(db, "metrics_windows") == sent
        assert count_rows(db, "devices") == 1000
        status = edgeml_json("fleet", "status", "--db", db)
        assert (status["windows"], status["lost_windows"], status["devices"]) == (sent, 0, 1000)


def test_private_postgresql_stopped_20_s_under_load_loses_nothing(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    base = f"pgdown-{uuid.uuid4().hex[:8]}"
    pg = PrivatePostgres()
    try:
        pg.start()
        with pg_database(pg.url, admin_db="postgres") as db, private_broker(tmp_path) as port:
            upgrade(db)
            messages = _load(bundle, base, devices=50, windows=200)  # 10,000 windows over ~40 s
            broker = f"mqtt://127.0.0.1:{port}"
            monitor = start_monitor(broker, db, base, "mon-pgdown")
            try:
                publisher = _publish_in_background(port, messages, rate=250.0)
                wait_until(lambda: count_rows(db, "metrics_windows") >= 1000, 60, "1,000 windows")
                pg.stop()
                stopped = time.monotonic()
                time.sleep(20.0)
                assert monitor.proc.poll() is None  # still running, holding its batch
                metrics = scrape(str(monitor.metrics_url))
                assert metrics["edgeml_monitor_db_up"] == 0
                assert metrics["edgeml_monitor_db_errors_total"] >= 1
                pg.start()
                down = time.monotonic() - stopped
                publisher.join(timeout=120)
                wait_until(lambda: count_rows(db, "metrics_windows") >= len(messages), 120,
                           "every window after the outage")
                time.sleep(1.0)
                assert scrape(str(monitor.metrics_url))["edgeml_monitor_db_up"] == 1
            finally:
                monitor.terminate()
            assert down >= 20.0
            assert count_rows(db, "metrics_windows") == len(messages)
            status = edgeml_json("fleet", "status", "--db", db, "--since", "1d")
            assert (status["windows"], status["lost_windows"]) == (len(messages), 0)
    finally:
        pg.close()
