"""A simulated field for real devices: the inputs they see and the ground truth they are told.

:class:`FieldSim` drives real ``edgeml serve``/``edgeml agent`` processes the way a
production line would: it sends each device parts to judge over HTTP (Open Inference
Protocol v2 ``/v1/predict``), drawn from :func:`edgeml.train.generators.quality_inputs`,
and answers every captured sample the devices publish on ``.../samples`` with the true
label (:func:`edgeml.train.generators.quality_verdict`) on ``.../feedback/set``, as an
inspector who checks a sample of the parts would. At ``change_at`` seconds the world
changes: the material shifts (``shift`` ramps from 0 to 1 over ``ramp_s``) and the
labelling rule becomes rule 2. Devices then see drift (inputs) and decay (feedback).

Used by the closed-loop scenario test and ``make demo-fleet``. Host side (pandas).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from edgeml.runtime import topics
from edgeml.runtime.mqtt_client import make_client
from edgeml.runtime.settings import BrokerSettings
from edgeml.train.generators import quality_inputs, quality_verdict

__all__ = ["FieldSim", "FieldStats"]

log = logging.getLogger(__name__)


@dataclass
class FieldStats:
    requests: int = 0
    request_errors: int = 0
    samples: int = 0
    feedback: int = 0
    by_version: Counter[tuple[str, int]] = field(default_factory=Counter)
    correct: Counter[tuple[str, int]] = field(default_factory=Counter)

    def accuracy(self, version: int) -> float | None:
        """How often the devices' predictions on captured samples were right, per version."""
        keys = [k for k in self.by_version if k[1] == version]
        n = sum(self.by_version[k] for k in keys)
        return sum(self.correct[k] for k in keys) / n if n else None


class FieldSim:
    """See the module docstring. ``devices``: device id -> base HTTP URL."""

    def __init__(self, broker: BrokerSettings, base: str, fleet: str, devices: dict[str, str],
                 *, change_at: float | None = None, ramp_s: float = 5.0, rows: int = 8,
                 interval_s: float = 0.2, seed: int = 0) -> None:
        self.broker = broker
        self.base = topics.validate_base(base)
        self.fleet = topics.validate_id(fleet, "fleet")
        self.devices = dict(devices)
        self.change_at = change_at
        self.ramp_s = ramp_s
        self.rows = rows
        self.interval_s = interval_s
        self.stats = FieldStats()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = time.time()
        self._threads: list[threading.Thread] = []
        self._subscribed = threading.Event()
        self._client = make_client(broker, f"edgeml-fieldsim-{fleet}-{seed}", mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message

    # -- the world ---------------------------------------------------------------------------

    def elapsed(self, at: float | None = None) -> float:
        return (time.time() if at is None else at) - self._t0

    def shift(self, at: float | None = None) -> float:
        if self.change_at is None:
            return 0.0
        past = self.elapsed(at) - self.change_at
        return 0.0 if past < 0 else min(1.0, past / self.ramp_s if self.ramp_s > 0 else 1.0)

    def rule(self, at: float | None = None) -> int:
        return 2 if self.change_at is not None and self.elapsed(at) >= self.change_at else 1

    def change_now(self) -> None:
        """Make the world change from now on (for a demo driven by hand)."""
        self.change_at = self.elapsed()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> FieldSim:
        self._t0 = time.time()
        self._client.connect(self.broker.host, self.broker.port, self.broker.keepalive)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"fieldsim: no subscription on {self.broker.display}")
        for device, url in self.devices.items():
            t = threading.Thread(target=self._load, args=(device, url), daemon=True,
                                 name=f"fieldsim-{device}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> FieldSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- load --------------------------------------------------------------------------------

    def _load(self, device: str, url: str) -> None:
        while not self._stop.is_set():
            with self._lock:
                frame = quality_inputs(self.rows, self._rng, self.shift())
            body = json.dumps({"instances": frame.to_dict(orient="records")}).encode()
            req = urllib.request.Request(url.rstrip("/") + "/v1/predict", body,
                                         {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
                ok = True
            except (urllib.error.URLError, OSError) as exc:
                log.debug("fieldsim: %s: %s", device, exc)
                ok = False
            with self._lock:
                self.stats.requests += 1
                self.stats.request_errors += 0 if ok else 1
            self._stop.wait(self.interval_s)

    # -- ground truth ------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        client.subscribe(topics.fleet_filter(self.base, self.fleet, topics.SAMPLES), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = topics.parse_topic(self.base, message.topic)
        if parsed is None:
            return
        _, device, _ = parsed
        try:
            sample = json.loads(message.payload)
            features = sample["features"]
            at = datetime.fromisoformat(str(sample["ts"]).replace("Z", "+00:00")).timestamp()
            truth = quality_verdict(features, self.rule(at))
        except (ValueError, KeyError, TypeError) as exc:
            log.debug("fieldsim: sample from %s not understood: %s", device, exc)
            return
        model = sample.get("model") or {}
        key = (str(model.get("name")), int(model.get("version") or 0))
        predicted = (sample.get("prediction") or {}).get("label")
        reply = topics.DeviceTopics.create(self.base, self.fleet, device).feedback_set
        client.publish(reply, json.dumps({"id": sample["id"], "label": truth}), qos=1)
        with self._lock:
            self.stats.samples += 1
            self.stats.feedback += 1
            self.stats.by_version[key] += 1
            self.stats.correct[key] += int(predicted == truth)
