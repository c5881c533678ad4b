"""``edgeml simulate``: N virtual devices in one process, reporting like real ones.

Every virtual device runs the bundle for real: its rows go through the runtime's
:class:`~edgeml.runtime.predictor.Predictor` (one ONNX session shared by all devices),
are recorded by its own :class:`~edgeml.runtime.stats.RuntimeStats` and
:class:`~edgeml.runtime.sampling.Sampler`, and its messages are built by
:mod:`edgeml.runtime.payloads` and published on :class:`~edgeml.runtime.topics.DeviceTopics`
topics: the monitor cannot tell them from ``edgeml serve``. What the simulator adds:

- inputs: rows drawn from the manifest's reference profile (each feature from its
  quantile bins, categories and missing rate, independently: :class:`ReferenceSampler`),
  from the bundle's self-test rows (``inputs="selftest"``), or from a CSV file such as the
  recipe's data (``inputs="data.csv"``: keeps the features' correlations, which the
  reference sampler does not, so predictions look like the holdout's);
- a clock: ``speed=0`` generates the window timestamps (10 simulated minutes take the
  time of their predictions), ``speed=1`` runs in real time, ``speed=10`` ten times faster;
  it starts at ``start`` (epoch seconds, default now; the CLI's ``--start`` and its
  default for ``--speed 0``, now minus the duration, come from :func:`resolve_start`);
- drift (:class:`DriftSpec`, ``feature=temp,shift=+8,from=120,fraction=0.1``: shift or
  ``scale`` a numeric feature, ``swap=a:b`` two categories, in the windows that start at
  simulated second 120 or later, on a fraction of the devices), label decay
  (:class:`DecaySpec`) and feedback labels from a ground-truth function (default: agrees
  with the prediction as often as the holdout accuracy says);
- churn: restarts with a new session (``$state`` disconnected, new ``$info``, ready) and
  disconnects during which windows are held back and then delivered late, as the spool does.

Connections: ``connections`` MQTT v5 clients (default 2) publish for all devices. A will
covers one topic per connection, so the broker's ``lost`` will is emulated: a device that
"dies" has ``lost`` published on its ``$state`` (retained, with its session property).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeml.errors import UsageError
from edgeml.fleet.simspec import (
    CsvSampler,
    DecaySpec,
    DriftSpec,
    ReferenceSampler,
    SelfTestSampler,
)
from edgeml.runtime import payloads
from edgeml.runtime.mqtt_client import make_client
from edgeml.runtime.prediction import Prediction
from edgeml.runtime.sampling import Sampler, iso_utc
from edgeml.runtime.settings import BrokerSettings
from edgeml.runtime.stats import RuntimeStats
from edgeml.runtime.system import platform_info
from edgeml.runtime.topics import DEFAULT_BASE, DEFAULT_FLEET, DeviceTopics

__all__ = ["DecaySpec", "DriftSpec", "SimulationReport", "Simulator", "simulate"]

log = logging.getLogger(__name__)

Truth = Callable[[dict[str, Any], Any], Any]  # (row, predicted label) -> true label


@dataclass
class SimulationReport:
    """What the simulator sent, per kind, and which devices were drifted or decayed."""

    devices: int = 0
    windows: int = 0
    rows: int = 0
    samples: int = 0
    feedback: int = 0
    restarts: int = 0
    disconnects: int = 0
    drifted: list[str] = field(default_factory=list)
    decayed: list[str] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    window_ends: list[float] = field(default_factory=list)
    seconds: float = 0.0  # wall time


class VirtualDevice:
    """What :mod:`edgeml.runtime.payloads` reads from a device agent, for one simulated device."""

    def __init__(self, sim: Simulator, index: int) -> None:
        self.index = index
        self.topics = DeviceTopics.create(sim.base_topic, sim.fleet, f"{sim.prefix}{index:05d}")
        self.predictor = sim.predictor
        self.broker = sim.broker
        self.http_url = None
        self.protocol = mqtt.MQTTv5
        self.metrics_interval = sim.interval
        self.session = 1
        self.seq = 0
        self.started_at = iso_utc(sim.now)
        self.stats = RuntimeStats.for_predictor(sim.predictor, clock=lambda: sim.now)
        self.sampler = Sampler(sim.feedback_rate, max_per_minute=10**9, seed=sim.seed + index)
        self.sampler.attach(self.stats.observers)
        self.client = sim.clients[index % len(sim.clients)]
        self.drifted = False
        self.decayed = False
        self.offline_until = -math.inf
        self.offline = False
        self.held: list[tuple[str, bytes]] = []

    def info(self) -> dict[str, Any]:
        return payloads.info(self, {**platform_info(), "simulated": True})


class Simulator:
    """See the module docstring; :func:`simulate` is the one-call form."""

    def __init__(
        self,
        bundle: str | Path,
        *,
        broker: str,
        devices: int,
        fleet: str = DEFAULT_FLEET,
        base_topic: str = DEFAULT_BASE,
        interval: float = 10.0,
        rate: float = 5.0,
        batch: int = 1,
        duration: float = 60.0,
        drift: list[DriftSpec] | None = None,
        decay: list[DecaySpec] | None = None,
        feedback_rate: float = 0.05,
        truth: Truth | None = None,
        inputs: str = "reference",
        speed: float = 0.0,
        start: float | None = None,
        restart_rate: float = 0.0,
        disconnect_rate: float = 0.0,
        error_rate: float = 0.0,
        connections: int = 2,
        prefix: str = "sim-",
        seed: int = 0,
    ) -> None:
        from edgeml.runtime.predictor import Predictor

        if devices < 1:
            raise UsageError("--devices must be >= 1")
        for what, v in (("--interval", interval), ("--duration", duration)):
            if not v > 0:
                raise UsageError(f"{what} must be > 0, got {v}")
        if rate < 0 or speed < 0 or batch < 1 or connections < 1:
            raise UsageError("--rate and --speed must be >= 0, --batch and --connections >= 1")
        self.predictor = Predictor(bundle)
        self.manifest = self.predictor.manifest
        self.broker = BrokerSettings.from_url(broker)
        self.fleet, self.base_topic, self.prefix = fleet, base_topic, prefix
        self.n, self.interval, self.rate, self.batch = devices, interval, rate, batch
        self.duration, self.speed, self.seed = duration, speed, seed
        self.drift, self.decay = list(drift or []), list(decay or [])
        self.feedback_rate, self.error_rate = feedback_rate, error_rate
        self.restart_rate, self.disconnect_rate = restart_rate, disconnect_rate
        self.rng = np.random.default_rng(seed)
        self.inputs: Any
        if inputs == "selftest":
            self.inputs = SelfTestSampler(self.predictor)
        elif inputs == "reference":
            self.inputs = ReferenceSampler(self.manifest)
        else:  # a CSV file of rows, e.g. the recipe's data
            self.inputs = CsvSampler(inputs, self.manifest)
        for spec in self.drift:
            spec.check(self.manifest)
        holdout = getattr(self.manifest.metrics, "holdout", None) or {}
        self.agreement = float(holdout.get("accuracy", 0.9)) if isinstance(holdout, dict) else 0.9
        self.truth = truth
        self.t0 = time.time() if start is None else start
        self.now = self.t0
        self._connections = connections
        self.clients: list[mqtt.Client] = []
        self.report = SimulationReport(devices=devices, start=self.t0)
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self._lock = threading.Lock()

    # -- MQTT -----------------------------------------------------------------------------

    def _connect(self) -> None:
        for i in range(min(self._connections, self.n)):
            client = make_client(self.broker, f"edgeml-sim-{self.prefix}{i}-{self.seed}", mqtt.MQTTv5)
            client.max_queued_messages_set(0)
            client.max_inflight_messages_set(100)
            client.connect(self.broker.host, self.broker.port, self.broker.keepalive)
            client.loop_start()
            self.clients.append(client)
        deadline = time.monotonic() + 10
        while not all(c.is_connected() for c in self.clients):
            if time.monotonic() > deadline:
                raise UsageError(f"broker {self.broker.display} did not accept the connection")
            time.sleep(0.01)

    def _publish(self, dev: VirtualDevice, topic: str, body: bytes | str, *, retain: bool = False,
                 session: bool = False) -> None:
        props = None
        if session:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("session", str(dev.session))
        info = dev.client.publish(topic, body, qos=1, retain=retain, properties=props)
        self._pending.append(info)
        if len(self._pending) >= 2000:
            self._drain(1000)

    def _drain(self, keep: int = 0) -> None:
        while len(self._pending) > keep:
            info = self._pending.pop(0)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                info.wait_for_publish(timeout=30)

    def _state(self, dev: VirtualDevice, state: str) -> None:
        self._publish(dev, dev.topics.state, state, retain=True, session=True)

    def _announce(self, dev: VirtualDevice) -> None:
        self._state(dev, "init")
        self._publish(dev, dev.topics.info, payloads.dumps(dev.info()), retain=True)
        self._state(dev, "ready")

    # -- one window -------------------------------------------------------------------------

    def _rows(self, dev: VirtualDevice, n: int, t: float) -> dict[str, np.ndarray]:
        columns: dict[str, np.ndarray] = self.inputs.sample(n, self.rng)
        if dev.drifted:  # from=S: windows that start at S or later (t is the window's end)
            for spec in self.drift:
                if t - self.interval - self.t0 >= spec.start - 1e-9:
                    columns = spec.apply(columns)
        return columns

    def _labels(self, dev: VirtualDevice, captured: list[dict[str, Any]], t: float) -> list[Any]:
        classes = list(self.manifest.outputs.classes or [])
        agree = self.agreement
        for spec in self.decay:
            if dev.decayed and t - self.interval - self.t0 >= spec.start - 1e-9:
                agree = spec.accuracy
        out = []
        for rec in captured:
            predicted = (rec.get("prediction") or {}).get("label")
            if self.truth is not None:
                out.append(self.truth(rec.get("features") or {}, predicted))
                continue
            if predicted is None or self.rng.random() < agree or len(classes) < 2:
                out.append(predicted)
            else:
                out.append(self.rng.choice([c for c in classes if c != predicted]))
        return out

    def _window(self, dev: VirtualDevice, t_end: float) -> None:
        n = int(self.rng.poisson(self.rate * self.interval))
        if n:
            feeds = self.predictor.feeds(self._rows(dev, n, t_end))
            started = time.perf_counter()
            prediction = self.predictor.run(feeds)
            per_request = (time.perf_counter() - started) / math.ceil(n / self.batch)
            for i in range(0, n, self.batch):
                part = {k: v[i:i + self.batch] for k, v in feeds.items()}
                sliced = Prediction(prediction.decoder, [r[i:i + self.batch] for r in prediction.outputs.values()])
                if self.error_rate and self.rng.random() < self.error_rate:
                    dev.stats.record_error("/v1/predict", "input")
                    continue
                dev.stats.record("/v1/predict", per_request, part, sliced, "http")
            self.report.rows += n
        self.now = t_end
        rest, times = payloads.split_window(dev.stats.window(reset=True))
        dev.seq += 1
        extra = {"window": times, "process": {"rss_bytes": None, "cpu_percent": None},
                 "system": {"temperature_c": None, "load1": None},
                 "spool": {"queued": len(dev.held), "dropped_total": 0},
                 "mqtt": {"connected": t_end >= dev.offline_until, "connects": dev.session,
                          "rejected_publishes": 0, "feedback_accepted": 0, "feedback_rejected": 0,
                          "samples_captured_total": dev.sampler.captured_total,
                          "samples_rate_limited_total": dev.sampler.rate_limited_total}}
        out = [(dev.topics.metrics, payloads.dumps(payloads.metrics(dev, dev.seq, rest, extra)))]
        captured = dev.sampler.drain()
        for rec in captured:
            rec["ts"] = iso_utc(t_end - self.rng.random() * self.interval)
        for rec, label in zip(captured, self._labels(dev, captured, t_end), strict=True):
            sample = payloads.sample(dev, rec)
            out.append((dev.topics.samples, payloads.dumps(sample)))
            out.append((dev.topics.feedback, payloads.dumps(payloads.feedback(dev, sample, label, ts=t_end))))
            self.report.samples += 1
            self.report.feedback += 1
        self.report.windows += 1
        if t_end < dev.offline_until:
            dev.held += out  # the spool keeps them while the broker is out of reach
            return
        if dev.offline:  # back: announce again (same session), then the spooled backlog
            dev.offline = False
            self._announce(dev)
        for topic, body in [*dev.held, *out]:
            self._publish(dev, topic, body)
        dev.held.clear()

    def _churn(self, dev: VirtualDevice, t: float) -> None:
        if self.restart_rate and self.rng.random() < self.restart_rate:
            self._state(dev, "disconnected")
            dev.session += 1
            dev.started_at = iso_utc(t)
            self._announce(dev)
            self.report.restarts += 1
        elif self.disconnect_rate and t >= dev.offline_until and self.rng.random() < self.disconnect_rate:
            dev.offline_until = t + self.interval * int(self.rng.integers(1, 4))
            dev.offline = True
            self._state(dev, "lost")  # what the broker's will would say for this device
            self.report.disconnects += 1

    # -- run --------------------------------------------------------------------------------

    def run(self) -> SimulationReport:
        wall = time.monotonic()
        self._connect()
        try:
            devices = [VirtualDevice(self, i) for i in range(self.n)]
            self._mark(devices)
            for dev in devices:
                self._announce(dev)
            ticks = max(1, round(self.duration / self.interval))
            for k in range(1, ticks + 1):
                t_end = self.t0 + k * self.interval
                if self.speed > 0:
                    delay = (t_end - self.t0) / self.speed - (time.monotonic() - wall)
                    if delay > 0:
                        time.sleep(delay)
                for dev in devices:
                    self._churn(dev, t_end)
                    self._window(dev, t_end)
                self.report.window_ends.append(t_end)
            for dev in devices:
                for topic, body in dev.held:
                    self._publish(dev, topic, body)
                dev.held.clear()
                self._state(dev, "disconnected")
            self._drain()
        finally:
            for client in self.clients:
                client.disconnect()
                client.loop_stop()
        self.report.end = self.now
        self.report.seconds = time.monotonic() - wall
        return self.report

    def _mark(self, devices: list[VirtualDevice]) -> None:
        for specs, attr, names in ((self.drift, "drifted", self.report.drifted),
                                   (self.decay, "decayed", self.report.decayed)):
            fraction = max((s.fraction for s in specs), default=0.0)
            k = round(fraction * len(devices))
            if not k:
                continue
            chosen = self.rng.choice(len(devices), size=k, replace=False)
            for i in sorted(chosen.tolist()):
                setattr(devices[i], attr, True)
                names.append(devices[i].topics.device)


def resolve_start(start: str | None, speed: float, duration: float,
                  now: float | None = None) -> float | None:
    """The simulated clock's start (epoch seconds) for ``--start``: an ISO 8601 time (UTC
    when it has no offset), or by default ``now - duration`` for ``speed=0`` (the windows
    end by now, so the dashboard and ``edgeml fleet`` show them at once) and None (now)
    otherwise."""
    if start is None:
        if speed == 0:
            return (time.time() if now is None else now) - duration
        return None
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(start.strip())
    except ValueError:
        raise UsageError(f"--start {start!r} is not an ISO 8601 time "
                         "(e.g. 2026-01-31T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def simulate(bundle: str | Path, **options: Any) -> SimulationReport:
    """Run a simulated fleet (see :class:`Simulator` for the options) and report what it sent."""
    return Simulator(bundle, **options).run()
