"""``edgeml simulate --start``: windows stamped where the user asked, and with ``--speed 0``
by default ending by now, so ``edgeml fleet devices`` shows them at once (the real CLI, the
real broker and a real monitor into SQLite)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from _mqtt_support import unique_id
from dashboard_support import _clear_retained, new_store
from fleet_support import make_fleet_bundle
from sqlalchemy import func, select

from edgeml.fleet.monitor import Monitor, MonitorSettings
from edgeml.fleet.schema import MetricsWindow
from edgeml.fleet.simulate import resolve_start

BROKER = "mqtt://127.0.0.1:1883"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = make_fleet_bundle(tmp_path_factory.mktemp("fleet-bundle"))
    return path


def _simulate(bundle: Path, base: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeml", "simulate", "--broker", BROKER, "--bundle", str(bundle),
         "--devices", "3", "--duration", "120", "--interval", "10", "--speed", "0",
         "--base-topic", base, "--json", *extra], capture_output=True, text=True, timeout=180)


def test_speed_0_windows_end_by_now_and_show_in_fleet_devices_at_once(
        bundle: Path, tmp_path: Path) -> None:
    url, store = new_store(tmp_path / "fleet.db")
    base = unique_id("simstart")
    monitor = Monitor(MonitorSettings(broker=BROKER, base_topic=base, group=unique_id("g"),
                                      client_id=unique_id("mon"), session_expiry=30), store=store)
    monitor.start()
    try:
        assert monitor.wait_subscribed(15)
        before = time.time()
        proc = _simulate(bundle, base)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["windows"] == 3 * 12
        # the clock started 120 simulated seconds before the run: the last window ends by now
        assert before - 120 - 5 <= report["start"] <= before - 120 + 5
        assert report["end"] <= time.time()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with store.session() as s:
                if s.execute(select(func.count()).select_from(MetricsWindow)).scalar_one() == 36:
                    break
            time.sleep(0.2)
    finally:
        monitor.stop()
        _clear_retained(base)
    shown = subprocess.run([sys.executable, "-m", "edgeml", "fleet", "devices", "--json",
                            "--db", url], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert sorted(r["device"] for r in rows) == ["sim-00000", "sim-00001", "sim-00002"]
    assert all(r["windows"] == 12 and r["requests"] > 0 for r in rows), rows


def test_start_stamps_the_windows_from_the_given_time_and_refuses_a_bad_one(
        bundle: Path) -> None:
    base = unique_id("simstart")
    try:
        proc = _simulate(bundle, base, "--start", "2026-03-01T12:00:00Z")
        bad = _simulate(bundle, base, "--start", "yesterday")
    finally:
        _clear_retained(base)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["start"] == datetime(2026, 3, 1, 12, tzinfo=timezone.utc).timestamp()
    assert report["end"] == report["start"] + 120
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("error: --start 'yesterday' is not an ISO 8601 time "
                                  "(e.g. 2026-01-31T12:00:00Z)")


def test_resolve_start_defaults() -> None:
    assert resolve_start(None, 0.0, 600.0, now=10_000.0) == 9_400.0
    assert resolve_start(None, 1.0, 600.0, now=10_000.0) is None  # real time: starts now
    assert resolve_start("2026-03-01T12:00:00", 1.0, 600.0) == datetime(
        2026, 3, 1, 12, tzinfo=timezone.utc).timestamp()  # no offset: UTC
