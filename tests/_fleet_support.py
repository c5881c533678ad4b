"""Helpers for the fleet tests: stores on SQLite and PostgreSQL, monitors, payloads, publishers.

PostgreSQL tests use the machine's server (``postgresql+psycopg://postgres@127.0.0.1:5432``)
with a uniquely named database per test, dropped afterwards; the server is never stopped.
Telemetry payloads are built by the runtime's own code (:class:`RuntimeStats`,
:mod:`edgeml.runtime.payloads`), never written by hand.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import create_engine, text

from edgeml.bundle.manifest import Manifest
from edgeml.runtime import payloads
from edgeml.runtime.stats import RuntimeStats
from edgeml.runtime.topics import DeviceTopics

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_ADMIN = f"{PG_SERVER}/test"


@contextmanager
def pg_database(server: str = PG_SERVER, admin_db: str = "test") -> Iterator[str]:
    """A fresh, uniquely named database on ``server``; dropped (forcibly) afterwards."""
    name = f"edgeml_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{server}/{admin_db}", isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def store_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of ``kind`` (``sqlite`` or ``postgresql``), not yet migrated."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        with pg_database() as url:
            yield url


def manifest_of(bundle: Path) -> Manifest:
    with zipfile.ZipFile(bundle) as zf:
        return Manifest.from_json(zf.read("manifest.json"))


class Windows:
    """``edgeml.metrics`` payloads of one virtual device, built by the runtime's code."""

    def __init__(self, manifest: Manifest, base: str, fleet: str, device: str,
                 session: int = 1) -> None:
        self.manifest = manifest
        self.topics = DeviceTopics.create(base, fleet, device)
        self.agent = SimpleNamespace(topics=self.topics, session=session,
                                     predictor=SimpleNamespace(manifest=manifest))
        self.stats = RuntimeStats(manifest)

    @property
    def topic(self) -> str:
        return self.topics.metrics

    def payload(self, seq: int, requests: int = 0, session: int | None = None) -> bytes:
        for _ in range(requests):
            self.stats.record_request("v2/models/infer")
        rest, times = payloads.split_window(self.stats.window(reset=True))
        agent = self.agent if session is None else SimpleNamespace(
            topics=self.topics, session=session, predictor=self.agent.predictor)
        body = payloads.metrics(agent, seq, rest, {"window": times,
                                                   "spool": {"queued": 0, "dropped_total": 0}})
        return payloads.dumps(body)


def info_payload(windows: Windows, session: int | None = None) -> bytes:
    """The device's ``$info`` as :func:`edgeml.runtime.payloads.info` builds it."""
    agent = SimpleNamespace(
        topics=windows.topics, session=session or windows.agent.session,
        started_at="2026-12-01T10:00:00.000Z", protocol=mqtt.MQTTv5,
        predictor=SimpleNamespace(manifest=windows.manifest, sha256=None, bundle=None),
        broker=SimpleNamespace(display="mqtt://127.0.0.1:1883"), http_url=None,
        metrics_interval=10.0, sampler=SimpleNamespace(rate=0.0, max_per_minute=60))
    return payloads.dumps(payloads.info(agent, {"arch": "x86_64"}))


def session_properties(session: int) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("session", str(session))
    return props


class Publisher:
    """One MQTT v5 client publishing at QoS 1 as fast as the broker acknowledges."""

    def __init__(self, port: int, host: str = "127.0.0.1", inflight: int = 200) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"test-pub-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self._acked = threading.Semaphore(0)
        self._sent = 0
        self.client.on_publish = lambda *a: self._acked.release()
        self.client.connect(host, port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, properties: Properties | None = None,
             retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        self._sent += 1

    def wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self._sent:
            if not self._acked.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"{self._sent} publishes not acknowledged by the broker")
            self._sent -= 1

    def close(self) -> None:
        self.wait()
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class MonitorProcess:
    """``python -m edgeml monitor`` in a subprocess (killable with SIGKILL)."""

    proc: subprocess.Popen[str]
    lines: list[str]
    metrics_url: str | None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return "".join(self.lines)


def start_monitor(broker: str, db: str, base: str, client_id: str, *args: str,
                  timeout: float = 30.0) -> MonitorProcess:
    """Start a monitor and wait until it has subscribed (its ``monitor:`` line)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeml", "monitor", "--broker", broker, "--db", db,
         "--base-topic", base, "--client-id", client_id, "--http", "0",
         "--session-expiry", "600", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    ready: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("metrics: "):
                    ready.put(line.split()[1])
        ready.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        url = ready.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        raise AssertionError("monitor did not start:\n" + "".join(lines)) from None
    if url is None:
        raise AssertionError("monitor exited:\n" + "".join(lines))
    wait_until(lambda: "connected to" in "".join(lines), 15, "the monitor's connection")
    time.sleep(0.3)  # SUBACK
    return MonitorProcess(proc, lines, url)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        body = resp.read().decode()
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def edgeml_json(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run ``edgeml ARGS --json`` and parse its output."""
    import json

    proc = subprocess.run([sys.executable, "-m", "edgeml", *args, "--json"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@contextmanager
def private_broker(tmp_path: Path) -> Iterator[int]:
    """A private mosquitto on a free port that queues without limit (no persistence)."""
    import socket

    from _mqtt_support import free_port

    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join([f"listener {port} 127.0.0.1", "allow_anonymous true",
                               "persistence false", "max_queued_messages 0",
                               "max_queued_bytes 0", "max_inflight_messages 0", ""]))
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _connects(socket, port), 10, "the private mosquitto")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _connects(socket: Any, port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def count_rows(db: str, table: str) -> int:
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() or 0)
    finally:
        engine.dispose()


PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (initdb in a temporary folder, a free port).

    Run as the ``postgres`` user when the tests run as root (initdb refuses root). Only
    this cluster is ever stopped, by its own data folder; never the machine's server.
    """

    def __init__(self) -> None:
        import pwd
        import tempfile

        from _mqtt_support import free_port

        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="edgeml-pg-"))
        self.data = self.root / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._as([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync"])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def _as(self, cmd: list[str]) -> None:
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._as([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-o", f"-p {self.port} -k {self.root} -h 127.0.0.1 -c fsync=off", "-w", "start"])

    def stop(self) -> None:
        self._as([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def close(self) -> None:
        import contextlib
        import shutil

        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
