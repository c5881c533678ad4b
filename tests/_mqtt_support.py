"""Helpers for the MQTT tests: a tiny real bundle, free ports, a private mosquitto, a recorder.

The bundle is built here directly (scikit-learn -> skl2onnx -> zip with a manifest) so that
the telemetry tests do not depend on the training and packaging stages.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgeml.bundle.manifest import InputSpec, Manifest, Metrics, OnnxInfo, OutputSpec, TargetInfo

SHARED_HOST = "127.0.0.1"
SHARED_PORT = 1883
FEATURES = ("temp", "vibration", "mode")
GOOD_ROW = {"temp": 40.0, "vibration": 0.2, "mode": "auto"}


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _profile_numeric(values: np.ndarray) -> dict[str, Any]:
    counts, edges = np.histogram(values, bins=10)
    return {
        "kind": "numeric",
        "bin_edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "missing_rate": 0.0,
    }


def make_bundle(folder: Path, name: str = "pump") -> Path:
    """A small classification bundle (numeric temp, vibration; categorical mode)."""
    import pandas as pd
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    n = 300
    temp = rng.normal(50, 10, n)
    vib = rng.uniform(0, 1, n)
    mode = rng.choice(["auto", "manual", "eco"], n)
    y = np.where(temp + 20 * vib > 62, "fault", "ok")
    frame = pd.DataFrame({"temp": temp, "vibration": vib, "mode": mode})
    pipe = Pipeline(
        [
            (
                "preprocess",
                ColumnTransformer(
                    [
                        ("numeric", StandardScaler(), ["temp", "vibration"]),
                        ("categorical", OneHotEncoder(handle_unknown="ignore"), ["mode"]),
                    ],
                    sparse_threshold=0,
                ),
            ),
            ("model", LogisticRegression(max_iter=500)),
        ]
    ).fit(frame, y)
    onx = convert_sklearn(
        pipe,
        initial_types=[
            ("temp", FloatTensorType([None, 1])),
            ("vibration", FloatTensorType([None, 1])),
            ("mode", StringTensorType([None, 1])),
        ],
        options={id(pipe.steps[-1][1]): {"zipmap": False}},
        target_opset=17,
    )
    outputs = [o.name for o in onx.graph.output]
    model_bytes = onx.SerializeToString()

    import onnxruntime as ort

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    rows = [GOOD_ROW, {"temp": 80.0, "vibration": 0.9, "mode": "eco"}]
    feeds = {
        "temp": np.array([[r["temp"]] for r in rows], dtype=np.float32),
        "vibration": np.array([[r["vibration"]] for r in rows], dtype=np.float32),
        "mode": np.array([[r["mode"]] for r in rows], dtype=object),
    }
    got = sess.run(None, feeds)
    selftest = {
        "rows": rows,
        "expected": {outputs[0]: [str(v) for v in got[0]], outputs[1]: got[1].tolist()},
        "atol": 1e-4,
    }
    selftest_bytes = (json.dumps(selftest, indent=2, sort_keys=True) + "\n").encode()
    classes = [str(c) for c in pipe.classes_]
    preds = pipe.predict(frame)
    manifest = Manifest(
        name=name,
        version=1,
        task="classification",
        created_at="2026-11-28T17:00:00Z",
        edgeml_version="0.1.0",
        target=TargetInfo(name="x86_64", arch="x86_64"),
        onnx=OnnxInfo(opset=17, ir_version=int(onx.ir_version), min_onnxruntime="1.16"),
        inputs=[
            InputSpec("temp", "numeric", "float32", True, None, float(temp.min()), float(temp.max())),
            InputSpec("vibration", "numeric", "float32", True, None, float(vib.min()), float(vib.max())),
            InputSpec("mode", "categorical", "string", True, ["auto", "eco", "manual"]),
        ],
        outputs=OutputSpec(
            label=outputs[0], probabilities=outputs[1], classes=classes, label_dtype="string"
        ),
        files={
            "model.onnx": hashlib.sha256(model_bytes).hexdigest(),
            "selftest.json": hashlib.sha256(selftest_bytes).hexdigest(),
        },
        metrics=Metrics(primary="accuracy", holdout={"accuracy": 1.0}),
        reference_profile={
            "rows": n,
            "features": {
                "temp": _profile_numeric(temp),
                "vibration": _profile_numeric(vib),
                "mode": {
                    "kind": "categorical",
                    "frequencies": {m: float((mode == m).mean()) for m in ("auto", "eco", "manual")},
                    "missing_rate": 0.0,
                },
            },
            "prediction": {
                "kind": "classification",
                "frequencies": {c: float((preds == c).mean()) for c in classes},
            },
        },
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / manifest.filename
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", manifest.to_json())
        zf.writestr("model.onnx", model_bytes)
        zf.writestr("selftest.json", selftest_bytes)
    return path


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any = None

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Recorder:
    """A paho client (MQTT v5) that records every message it receives."""

    host: str = SHARED_HOST
    port: int = SHARED_PORT
    client_id: str = field(default_factory=lambda: unique_id("test-sub"))
    messages: queue.Queue[Received] = field(default_factory=queue.Queue)
    seen: list[Received] = field(default_factory=list)
    client: mqtt.Client | None = None
    protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5

    def start(self, *filters: str, clean_start: bool = True, session_expiry: int = 0,
              setup: Callable[[mqtt.Client], None] | None = None) -> Recorder:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=self.protocol)
        connected = queue.Queue[bool]()

        def on_connect(cl: mqtt.Client, ud: Any, fl: Any, rc: Any, pr: Any) -> None:
            if not rc.is_failure:
                for f in filters:
                    cl.subscribe(f, qos=1)
                connected.put(True)

        def on_message(cl: mqtt.Client, ud: Any, msg: mqtt.MQTTMessage) -> None:
            self.messages.put(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.properties))

        c.on_connect = on_connect
        c.on_message = on_message
        if setup is not None:
            setup(c)
        c.reconnect_delay_set(1, 2)
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            if session_expiry:
                props.SessionExpiryInterval = session_expiry
            c.connect_async(self.host, self.port, keepalive=10, clean_start=clean_start,
                            properties=props)
        else:
            c.connect_async(self.host, self.port, keepalive=10)
        c.loop_start()
        connected.get(timeout=10)
        time.sleep(0.2)  # let the SUBACKs come back
        self.client = c
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def wait_for(
        self, predicate: Callable[[Received], bool], timeout: float = 15.0, what: str = "message"
    ) -> Received:
        for msg in self.seen:
            if predicate(msg):
                self.seen.remove(msg)
                return msg
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                topics = sorted({m.topic for m in self.seen})
                raise AssertionError(f"no {what} within {timeout:.0f} s; saw topics {topics}")
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(msg):
                return msg
            self.seen.append(msg)

    def drain(self) -> list[Received]:
        out = list(self.seen)
        self.seen.clear()
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out


def clear_retained(root: str, host: str = SHARED_HOST, port: int = SHARED_PORT) -> None:
    """Remove the retained $state and $info of a test device (empty retained payloads)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("test-clean"),
                    protocol=mqtt.MQTTv311)
    c.connect(host, port)
    c.loop_start()
    for leaf in ("$state", "$info"):
        c.publish(f"{root}/{leaf}", b"", qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def publish(topic: str, payload: bytes | str, host: str = SHARED_HOST, port: int = SHARED_PORT,
            properties: Any = None, qos: int = 1,
            protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5, retain: bool = False) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("test-pub"), protocol=protocol)
    c.connect(host, port)
    c.loop_start()
    c.publish(topic, payload, qos=qos, retain=retain, properties=properties).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


@dataclass
class Server:
    """``python -m edgeml serve`` in a subprocess."""

    proc: subprocess.Popen[str]
    url: str
    lines: list[str]
    reader: Any = None

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        if self.reader is not None:
            self.reader.join(timeout=5)


def start_serve(bundle: Path, *args: str, timeout: float = 30.0) -> Server:
    """Start ``edgeml serve`` and wait for the line that prints its HTTP URL."""
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeml", "serve", str(bundle), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                proc.stdout.close()
                raise AssertionError("serve exited early:\n" + "".join(lines))
            continue
        lines.append(line)
        if line.startswith("http: "):
            break
    else:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise AssertionError("serve did not start:\n" + "".join(lines))
    reader = _drain_in_background(proc, lines)
    return Server(proc, f"http://127.0.0.1:{port}", lines, reader)


def _drain_in_background(proc: subprocess.Popen[str], lines: list[str]) -> Any:
    import threading

    def pump() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                lines.append(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def http_predict(url: str, rows: list[dict[str, Any]]) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url + "/v1/predict",
        data=json.dumps({"instances": rows}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@contextmanager
def private_mosquitto(
    tmp_path: Path, persistence: bool = False
) -> Iterator[tuple[int, Callable[[], None], Callable[[], None]]]:
    """A private mosquitto on a free port; yields (port, stop, start). Stopped by PID.

    With ``persistence`` it saves its state (sessions, queued messages) in ``tmp_path`` when
    stopped (SIGTERM) and restores it on restart, so that a test's observer keeps its
    persistent session across the outage it causes.
    """
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true"]
    if persistence:
        # Run as ourselves (as root mosquitto would switch to a user that cannot write here).
        lines += ["persistence true", f"persistence_location {tmp_path}/", "autosave_interval 1",
                  f"user {getpass.getuser()}"]
    else:
        lines.append("persistence false")
    conf.write_text("\n".join(lines) + "\n")
    state: dict[str, subprocess.Popen[bytes] | None] = {"proc": None}

    def start() -> None:
        proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        state["proc"] = proc
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("private mosquitto did not start")

    def stop() -> None:
        proc = state["proc"]
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            state["proc"] = None

    start()
    try:
        yield port, stop, start
    finally:
        stop()
