"""``edgeml monitor --http PORT --dashboard``: a real monitor process serves Prometheus
``/metrics`` and the fleet dashboard on one port, with the dashboard's bind rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _mqtt_support import free_port, unique_id
from dashboard_support import _clear_retained, new_store
from fleet_support import make_fleet_bundle

BROKER = "mqtt://127.0.0.1:1883"
TOKEN = "monitor-dashboard-token-0123456789"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = make_fleet_bundle(tmp_path_factory.mktemp("fleet-bundle"))
    return path


def _get(url: str, token: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


@contextmanager
def _monitor(db: str, base: str, port: int, *extra: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ}
    env.pop("EDGEML_DASHBOARD_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeml", "monitor", "--broker", BROKER, "--db", db,
         "--base-topic", base, "--group", unique_id("g"), "--client-id", unique_id("mon"),
         "--session-expiry", "30", "--http", str(port), "--dashboard", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except urllib.error.HTTPError as exc:
                exc.close()
                break  # it answers (401 with a token)
            except OSError:
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_metrics_and_the_fleet_page_answer_on_the_monitor_port(bundle: Path,
                                                               tmp_path: Path) -> None:
    url, store = new_store(tmp_path / "fleet.db")
    store.dispose()
    base, port = unique_id("mondash"), free_port()
    with _monitor(url, base, port):
        time.sleep(1.0)  # subscribed
        sim = subprocess.run(
            [sys.executable, "-m", "edgeml", "simulate", "--broker", BROKER, "--bundle",
             str(bundle), "--devices", "2", "--duration", "60", "--interval", "10", "--speed",
             "0", "--base-topic", base, "--prefix", "md-", "--json"],
            capture_output=True, text=True, timeout=180)
        _clear_retained(base)
        assert sim.returncode == 0, sim.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, kind, metrics = _get(f"http://127.0.0.1:{port}/metrics")
            if 'edgeml_monitor_stored_total{kind="metrics"} 12' in metrics:
                break
            time.sleep(0.3)
        assert status == 200 and kind.startswith("text/plain; version=0.0.4")
        assert 'edgeml_monitor_stored_total{kind="metrics"} 12' in metrics
        status, kind, page = _get(f"http://127.0.0.1:{port}/")
        assert status == 200 and kind.startswith("text/html")
        assert "md-00000" in page and "md-00001" in page
        status, _, body = _get(f"http://127.0.0.1:{port}/api/fleet")
        fleet = json.loads(body)
        assert fleet["counts"]["devices"] == 2
        assert {d["device"]: d["windows"] for d in fleet["devices"]} == {"md-00000": 6,
                                                                        "md-00001": 6}


def test_a_non_loopback_bind_needs_the_token_for_every_request(tmp_path: Path) -> None:
    url, store = new_store(tmp_path / "fleet.db")
    store.dispose()
    port = free_port()
    refused = subprocess.run(
        [sys.executable, "-m", "edgeml", "monitor", "--broker", BROKER, "--db", url,
         "--http", str(port), "--http-host", "0.0.0.0", "--dashboard"],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "EDGEML_DASHBOARD_TOKEN"})
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("error: refusing to serve the dashboard on 0.0.0.0 "
                                             "without a token")
    with _monitor(url, unique_id("mondash"), port, "--http-host", "0.0.0.0", "--token", TOKEN):
        for path in ("/metrics", "/", "/api/fleet"):
            assert _get(f"http://127.0.0.1:{port}{path}")[0] == 401, path
        status, _, metrics = _get(f"http://127.0.0.1:{port}/metrics", TOKEN)
        assert status == 200 and "edgeml_monitor_stored_total" in metrics
        assert _get(f"http://127.0.0.1:{port}/api/fleet", TOKEN)[0] == 200
