"""Helpers for the agent tests and benchmark: bundle versions, agent processes, a report watcher.

- :func:`make_bundle`: the tiny bundle (``tests/tiny_bundle.py``) at any version, target and
  architecture, padded to a size with an incompressible listed member, optionally signed.
- :class:`AgentProcess`: ``edgeml agent`` in a real process (stdout read by a thread).
- :class:`Watcher`: a real MQTT subscriber collecting every deploy report of a base topic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import tiny_bundle
from paho.mqtt.enums import CallbackAPIVersion

from edgeml.bundle.manifest import MANIFEST, TargetInfo
from edgeml.package.writer import file_hashes

BROKER = "mqtt://127.0.0.1:1883"
HOST, PORT = "127.0.0.1", 1883
ROW = {"temp": 21.5, "load": 0.4, "mode": "eco"}


def unique_base() -> str:
    return f"agenttest-{uuid.uuid4().hex[:10]}"


def make_bundle(out_dir: Path, version: int = 1, *, arch: str = "x86_64", target: str = "x86_64",
                pad: int = 0, sign_key: Path | None = None, name: str = "tiny") -> Path:
    manifest, files = tiny_bundle.members()
    del files[MANIFEST]
    if pad:
        files["extra/padding.bin"] = os.urandom(pad)
    manifest = dataclasses.replace(manifest, name=name, version=version,
                                   target=TargetInfo(name=target, arch=arch),
                                   files=file_hashes(files))
    files[MANIFEST] = manifest.to_json()
    out_dir.mkdir(parents=True, exist_ok=True)
    signed = f"-signed-{sign_key.parent.name}" if sign_key else ""
    path = out_dir / f"{name}-{version}-{target}-{arch}{signed}.edgeml"
    return tiny_bundle.write(path, files, sign_key)


class AgentProcess:
    """``edgeml agent`` in its own process, HTTP on a free port, reporting under ``base``."""

    def __init__(self, state_dir: Path, base: str, device: str, *args: str,
                 bundle: Path | None = None, env: dict[str, str] | None = None,
                 fleet: str = "lab", wait: bool = True, wrap: tuple[str, ...] = ()) -> None:
        self.state_dir, self.base, self.device, self.fleet = state_dir, base, device, fleet
        cmd = [*wrap, sys.executable, "-m", "edgeml", "agent", "--state-dir", str(state_dir),
               "--broker", BROKER, "--base-topic", base, "--fleet", fleet,
               "--device-id", device, "--port", "0", "--workers", "1",
               "--metrics-interval", "1", "--log-level", os.environ.get("AGENT_LOG", "warning"), *args]
        if bundle is not None:
            cmd += ["--bundle", str(bundle)]
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in read_stderr)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""
        if wait:
            line = self.wait_line("http: ", 60)
            self.url = line.split("http: ", 1)[1].strip()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        self.proc.stdout.close()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"agent never printed {prefix!r}: {self.lines!r}\n"
                                         f"{self.read_stderr(keep=True)}")
                self._cond.wait(min(left, 0.2))

    def predict(self, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body = json.dumps({"instances": rows or [ROW]}).encode()
        req = urllib.request.Request(self.url + "/v1/predict", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def model(self) -> tuple[str, int]:
        out = self.predict()
        return out["model"]["name"], int(out["model"]["version"])

    def kill(self) -> None:
        """kill -9 (by pid)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(10)
        return int(self.proc.returncode)

    def read_stderr(self, keep: bool = False) -> str:
        if self.stderr.closed:
            return ""
        self.stderr.seek(0)
        text = str(self.stderr.read())
        if not keep:
            self.stderr.close()
        return text


class Watcher:
    """Every ``edgeml.deploy-report/1`` published under ``base`` (plus ``$info`` payloads)."""

    def __init__(self, base: str, host: str = HOST, port: int = PORT) -> None:
        self.base = base
        self.reports: list[dict[str, Any]] = []
        self.infos: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"watch-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(f"{base}/#", qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert ready.wait(10), "watcher did not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/deploy"):
            with self._cond:
                self.reports.append(json.loads(msg.payload))
                self._cond.notify_all()
        elif msg.topic.endswith("/metrics"):
            with self._cond:
                self.metrics.append(json.loads(msg.payload))
        elif msg.topic.endswith("/$info") and msg.payload:
            with self._cond:
                self.infos.append(json.loads(msg.payload))
                self._cond.notify_all()

    def wait(self, event: str | tuple[str, ...], deployment: str | None = None,
             timeout: float = 30.0, device: str | None = None, since: int = 0) -> dict[str, Any]:
        """The first report of ``event`` (one of several) for ``deployment`` (from ``since``)."""
        events = (event,) if isinstance(event, str) else event
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for r in self.reports[since:]:
                    if r["event"] in events and (deployment is None or r["id"] == deployment) \
                            and (device is None or r["device"] == device):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {events} report for {deployment}: "
                                         f"{[(r['id'], r['event'], r['reason']) for r in self.reports]}")
                self._cond.wait(min(left, 0.2))

    def events(self, deployment: str) -> list[str]:
        with self._cond:
            return [r["event"] for r in self.reports if r["id"] == deployment]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def http_port(url: str) -> int:
    match = re.search(r":(\d+)$", url)
    assert match is not None
    return int(match.group(1))
