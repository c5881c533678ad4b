"""``edgeml fleet status|devices|device|drift|alerts`` on SQLite and PostgreSQL, and the
README's "Monitoring a fleet" block, run as written (against a private broker)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from _fleet_support import Windows, info_payload, manifest_of, private_broker, store_url
from _mqtt_support import free_port, make_bundle
from runtime_bundles import real_bundle

from edgeml.cli import main
from edgeml.fleet.db import Store, open_store
from edgeml.fleet.ingest import classify
from edgeml.fleet.migrate import upgrade
from edgeml.fleet.schema import Alert
from edgeml.fleet.writer import Item, Writer

README = Path(__file__).resolve().parent.parent / "README.md"
BASE = "edgeml"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, bundle: Path) -> Iterator[Store]:
    """A store with two devices: pi-1 (windows 1, 2, 4 of session 3; an open alert) and pi-2."""
    with store_url(request.param, tmp_path) as url:
        upgrade(url)
        s = open_store(url)
        manifest = manifest_of(bundle)
        w1 = Windows(manifest, BASE, "lab", "pi-1", session=3)
        w2 = Windows(manifest, BASE, "lab", "pi-2")
        messages = [(w1.topics.info, info_payload(w1), None), (w1.topics.state, b"ready", "3"),
                    (w2.topics.info, info_payload(w2), None), (w2.topics.state, b"lost", "1")]
        messages += [(w1.topic, w1.payload(seq, requests=10 * seq), None) for seq in (1, 2, 4)]
        messages += [(w2.topic, w2.payload(1, requests=5), None)]
        Writer(s).write([Item(t, b, classify(BASE, t, b, sess)) for t, b, sess in messages])
        now = datetime.now(timezone.utc)
        with s.session() as session:
            session.add_all([
                Alert(kind="lost_windows", severity="alert", fleet="lab", device="pi-1",
                      value=1.0, threshold=1.0, message="lab/pi-1: 1 metrics windows lost",
                      opened_at=now),
                Alert(kind="error_rate", severity="alert", fleet="lab", device="pi-2",
                      value=0.5, threshold=0.05, opened_at=now - timedelta(hours=2),
                      resolved_at=now - timedelta(hours=1)),
            ])
        try:
            yield s
        finally:
            s.dispose()


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    code, out, err = _run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_devices_show_state_model_requests_and_lost_windows(
        store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _json(capsys, "fleet", "devices", "--db", store.url)
    assert isinstance(rows, list)
    by_device = {r["device"]: r for r in rows}
    pi1, pi2 = by_device["pi-1"], by_device["pi-2"]
    assert (pi1["state"], pi1["model"], pi1["session"]) == ("ready", "pump@1", 3)
    assert (pi1["requests"], pi1["windows"], pi1["lost_windows"]) == (70, 3, 1)
    assert pi1["error_rate"] == 0.0 and pi1["requests_per_s"] > 0
    assert (pi2["state"], pi2["requests"], pi2["lost_windows"]) == ("lost", 5, 0)
    code, out, _ = _run(capsys, "fleet", "devices", "--db", store.url)
    assert code == 0 and "pi-1" in out and "pump@1" in out and "ready" in out


def test_device_detail_status_and_alerts(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    detail = _json(capsys, "fleet", "device", "lab/pi-1", "--db", store.url)
    assert isinstance(detail, dict)
    assert detail["sessions"][0] | {"first_seen": None} == {
        "session": 3, "started_at": "2026-12-01T10:00:00.000Z", "model": "pump@1",
        "first_seen": None, "first_seq": 1, "last_seq": 4, "received": 3, "lost": 1}
    assert [w["seq"] for w in detail["recent_windows"]] == [4, 2, 1]
    assert [a["kind"] for a in detail["open_alerts"]] == ["lost_windows"]
    status = _json(capsys, "fleet", "status", "--db", store.url)
    assert isinstance(status, dict)
    assert (status["devices"], status["states"]) == (2, {"lost": 1, "ready": 1})
    assert (status["windows"], status["requests"], status["lost_windows"]) == (4, 75, 1)
    assert status["models"] == ["pump@1"] and status["open_alerts"] == {"lost_windows": 1}
    open_alerts = _json(capsys, "fleet", "alerts", "--db", store.url)
    every = _json(capsys, "fleet", "alerts", "--all", "--db", store.url)
    assert isinstance(open_alerts, list) and isinstance(every, list)
    assert [a["device"] for a in open_alerts] == ["pi-1"]
    assert [a["kind"] for a in every] == ["lost_windows", "error_rate"]
    assert every[1]["resolved_at"] is not None
    code, out, _ = _run(capsys, "fleet", "alerts", "--db", store.url)
    assert code == 0 and "lost_windows" in out


def test_unknown_device_is_one_line_exit_2(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "fleet", "device", "nope", "--db", store.url)
    assert (code, out) == (2, "")
    assert err.splitlines() == ["error: no device 'nope' in the fleet store"]


def test_db_comes_from_the_environment(store: Store, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEML_FLEET_DB", store.url)
    status = _json(capsys, "fleet", "status")
    assert isinstance(status, dict) and status["devices"] == 2


def _readme_block() -> str:
    text = README.read_text()
    section = text[text.index("## Monitoring a fleet"):]
    match = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert match is not None
    return match.group(1)


def test_readme_monitoring_block_runs_as_written(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    penguins, _registry = real_bundle(tmp_path_factory)
    (tmp_path / "bundles").mkdir()
    shutil.copy(penguins, tmp_path / "bundles" / "penguins-1-x86_64.edgeml")
    block = _readme_block()
    assert "edgeml monitor --broker mqtt://127.0.0.1:1883" in block
    with private_broker(tmp_path) as port:
        script = (block.replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{port}")
                  .replace("9108", str(free_port())).replace("8080", str(free_port())))
        venv_bin = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ["PATH"]}
        env.pop("EDGEML_FLEET_DB", None)
        proc = subprocess.run(["bash", "-e", "-c", script + "\nwait\n"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "edgeml_monitor_stored_total" in proc.stdout
    assert "pi-1" in proc.stdout and "penguins@1" in proc.stdout
    rows = subprocess.run([sys.executable, "-m", "edgeml", "fleet", "devices", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    (row,) = json.loads(rows.stdout)
    assert (row["device"], row["model"]) == ("pi-1", "penguins@1") and row["windows"] >= 1
