"""The device's MQTT side: state, info, metrics, samples, feedback and inference requests.

:class:`DeviceAgent` runs one thread of its own (plus paho's network thread). paho
callbacks only put events on a queue; the agent thread does everything else, in order:
it spools telemetry, publishes it from the spool (deleting a row on its PUBACK), answers
inference requests and joins feedback with captured samples. The serving hot path only
meets the agent through the in-memory :class:`~edgeml.runtime.sampling.Sampler` observer.

Connection (paho-mqtt 2.x, VERSION2 callbacks): MQTT v5 with ``clean_start=False`` and a
one-hour session expiry, so commands sent while the device is offline are delivered when
it is back (3.1.1 brokers: ``clean_session=False``). The will sets ``$state`` to ``lost``
(retained, QoS 1). On EVERY connect the device publishes ``$state`` init, ``$info``, its
subscriptions, then ``$state`` ready (retained; zigbee2mqtt #4854: a broker restart must
not leave a stale state). ``$state`` messages carry the session counter as an MQTT v5 user
property ``session`` (Sparkplug bdSeq-like), the same number as ``$info.session``, and a
stale ``lost`` seen while connected is overwritten with ``ready``.

Payload schemas are documented in :mod:`edgeml.runtime.payloads`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeml.errors import RuntimeServiceError
from edgeml.runtime import payloads
from edgeml.runtime.commands import CommandHandler
from edgeml.runtime.mqtt_client import (
    BrokerSettings,
    connect_persistent,
    make_client,
    probe_protocol,
    protocol_name,
)
from edgeml.runtime.sampling import Sampler, iso_utc
from edgeml.runtime.settings import TelemetrySettings
from edgeml.runtime.spool import Spool, default_spool_dir
from edgeml.runtime.system import CpuMeter, device_reading, platform_info, rss_bytes
from edgeml.runtime.topics import DeviceTopics, default_device_id

__all__ = ["DeviceAgent"]

log = logging.getLogger(__name__)

INFLIGHT_WINDOW = 10
_TICK_S = 1.0  # idle wake-up period (samples, sampler refresh); events wake it at once


class DeviceAgent:
    """Connects a device to an MQTT broker and keeps it reporting. ``start()`` / ``stop()``.

    ``DeviceAgent(predictor, stats, BrokerSettings.from_url(url), TelemetrySettings(...))``.
    """

    def __init__(
        self,
        predictor: Any,
        stats: Any,
        broker: BrokerSettings,
        telemetry: TelemetrySettings | None = None,
        *,
        max_batch: int = 1024,
        http_url: str | None = None,
    ) -> None:
        settings = telemetry or TelemetrySettings()
        self.broker = broker
        self.settings = settings
        self.predictor = predictor
        self.stats = stats
        self.topics = DeviceTopics.create(settings.base_topic, settings.fleet,
                                          settings.device_id or default_device_id())
        self.metrics_interval = float(settings.metrics_interval)
        self.spool_dir = settings.spool_dir or default_spool_dir(self.topics.device)
        self.sampler = Sampler(settings.sample_rate, settings.sample_max_per_minute)
        self.reconnect_max_delay = settings.reconnect_max_delay
        self.http_url = http_url
        self.session = 0
        self.started_at = ""
        self.protocol: MQTTProtocolVersion | None = None
        self.spool: Spool | None = None
        self._client: mqtt.Client | None = None
        self._connected = False
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight: dict[int, int] = {}  # paho mid -> spool row id
        self._sent_upto = 0  # highest spool row handed to the current client
        self._next_probe = 0.0
        self._probe_delay = 1.0
        self._last_heal = 0.0
        self._cpu = CpuMeter()
        self.counters = {"connects": 0, "rejected_publishes": 0}
        self.requests = CommandHandler(self, max_batch=max_batch)

    # -- lifecycle --------------------------------------------------------------------

    def open(self) -> None:
        """Open the spool (locks its folder) and count a new session. ``start`` calls it too."""
        if self.spool is not None:
            return
        # Build (and drop) one client now: unreadable TLS files are a usage error at start,
        # not a log line repeated by every reconnection attempt.
        make_client(self.broker, self.topics.client_id, mqtt.MQTTv5)
        self.spool = Spool(self.spool_dir, max_messages=self.settings.spool_max_messages,
                           max_bytes=self.settings.spool_max_bytes)
        self.session = self.spool.increment("session")
        self.started_at = iso_utc(time.time())

    def start(self) -> None:
        """Start the agent thread (connecting, reporting). Returns at once."""
        if self._thread is not None:
            raise RuntimeServiceError("the device agent is already running")
        self.open()
        self.sampler.attach(self.stats.observers)
        self._thread = threading.Thread(target=self._run, name="edgeml-agent", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Spool the last metrics window, publish ``$state`` disconnected, disconnect."""
        if self._thread is None:
            if self.spool is not None:  # opened but never started
                self.spool.close()
                self.spool = None
            return
        self._stopping.set()
        self._events.put(("wake",))
        self._thread.join(timeout)
        self._thread = None

    @property
    def connected(self) -> bool:
        return self._connected

    def swap(self, predictor: Any, stats: Any) -> None:
        """Report on ``predictor`` from now on (a ModelHolder listener; thread-safe).

        The old model's window is spooled first, so no metrics window mixes two versions;
        then ``$info`` is republished. Returns once the agent thread has done it.
        """
        done = threading.Event()
        if self._thread is None:
            self._swap(predictor, stats, done)
            return
        self._events.put(("swap", predictor, stats, done))
        done.wait(10.0)

    def _swap(self, predictor: Any, stats: Any, done: threading.Event) -> None:
        try:
            if self.spool is not None:
                self._spool_samples()
                self._spool_metrics()  # the old version's last window, on its own
            self.sampler.detach()
            self.predictor, self.stats = predictor, stats
            if self._thread is not None:
                self.sampler.attach(stats.observers)
            client = self._client
            if client is not None and self._connected:
                client.publish(self.topics.info, payloads.dumps(self.info()), qos=1, retain=True)
        finally:
            done.set()

    # -- the agent thread ---------------------------------------------------------------

    def _run(self) -> None:
        next_metrics = time.monotonic() + self.metrics_interval
        while not self._stopping.is_set():
            try:
                self._ensure_client()
                wait = max(0.0, min(next_metrics - time.monotonic(), _TICK_S))
                self._process_events(wait)
                self._spool_samples()
                now = time.monotonic()
                if now >= next_metrics:
                    self._spool_metrics()
                    next_metrics += self.metrics_interval
                    if next_metrics < now:
                        next_metrics = now + self.metrics_interval
                self._pump()
            except Exception:  # keep reporting whatever happens; the error is in the log
                log.exception("telemetry agent error")
                time.sleep(1.0)
        self._shutdown()

    def _process_events(self, wait: float) -> None:
        try:
            event = self._events.get(timeout=wait) if wait > 0 else self._events.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(event)
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "puback":
            _, mid, failed, reason = event
            row = self._inflight.pop(mid, None)
            if row is not None and self.spool is not None:
                if failed:
                    self.counters["rejected_publishes"] += 1
                    log.warning("broker rejected a telemetry message: %s", reason)
                self.spool.ack(row)
        elif kind == "connected":
            self._connected = True
            self.counters["connects"] += 1
        elif kind == "disconnected":
            self._connected = False
        elif kind == "swap":
            self._swap(event[1], event[2], event[3])
        elif kind == "message" and not self._stopping.is_set():
            self.requests.handle(event[1])

    def _ensure_client(self) -> None:
        if self._client is not None or time.monotonic() < self._next_probe:
            return
        protocol = probe_protocol(self.broker, self.topics.client_id)
        if protocol is None:
            if self._probe_delay == 1.0:
                log.warning("broker %s unreachable; spooling telemetry", self.broker.display)
            self._next_probe = time.monotonic() + self._probe_delay
            self._probe_delay = min(self._probe_delay * 2, float(self.reconnect_max_delay))
            return
        self.protocol = protocol
        client = make_client(self.broker, self.topics.client_id, protocol)
        client.will_set(self.topics.state, "lost", qos=1, retain=True,
                        properties=self._session_properties(PacketTypes.WILLMESSAGE))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.reconnect_delay_set(1, self.reconnect_max_delay)
        connect_persistent(client, self.broker, protocol)
        self._client = client
        self._inflight.clear()
        self._sent_upto = 0
        client.loop_start()

    # -- paho callbacks (network thread): announce, then hand over to the agent thread --

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.warning("broker %s refused the connection: %s", self.broker.display, reason)
            return
        log.info("connected to %s (MQTT %s, session %d)", self.broker.display,
                 protocol_name(self.protocol), self.session)
        self._announce(client)
        self._events.put(("connected", bool(getattr(flags, "session_present", False))))

    def _announce(self, client: mqtt.Client) -> None:
        t = self.topics
        self._publish_state(client, "init")
        client.publish(t.info, payloads.dumps(self.info()), qos=1, retain=True)
        if self.protocol == mqtt.MQTTv5:
            own = SubscribeOptions(qos=1, noLocal=True)
            client.subscribe([(t.infer, SubscribeOptions(qos=1)),
                              (t.feedback_set, SubscribeOptions(qos=1)), (t.state, own)])
        else:
            client.subscribe([(t.infer, 1), (t.feedback_set, 1), (t.state, 1)])
        self._publish_state(client, "ready")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if not self._stopping.is_set():
            log.warning("disconnected from %s (%s); spooling telemetry", self.broker.display, reason)
        self._events.put(("disconnected",))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        self._events.put(("puback", mid, bool(getattr(reason, "is_failure", False)), str(reason)))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.topics.state:
            self._heal_state(client, message)
        else:
            self._events.put(("message", message))

    def _heal_state(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        """A stale ``lost`` (an old session's will) landed while we are up: say ready again."""
        if message.payload not in (b"lost", b"disconnected") or self._stopping.is_set():
            return
        now = time.monotonic()
        if now - self._last_heal < 1.0:
            return
        self._last_heal = now
        log.info("overwriting a stale $state %r with ready", message.payload.decode())
        self._publish_state(client, "ready")

    def _session_properties(self, packet_type: int) -> Properties | None:
        if self.protocol != mqtt.MQTTv5:
            return None
        props = Properties(packet_type)
        props.UserProperty = ("session", str(self.session))
        return props

    def _publish_state(self, client: mqtt.Client, state: str) -> mqtt.MQTTMessageInfo:
        return client.publish(self.topics.state, state, qos=1, retain=True,
                              properties=self._session_properties(PacketTypes.PUBLISH))

    # -- telemetry ------------------------------------------------------------------------

    def publish_reply(self, topic: str, body: dict[str, Any], correlation: bytes | None) -> None:
        """Send a request's reply (not spooled: a late reply is useless)."""
        if self._client is None:
            return
        props = None
        if self.protocol == mqtt.MQTTv5 and correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        self._client.publish(topic, payloads.dumps(body), qos=1, properties=props)

    def spool_message(self, topic: str, body: dict[str, Any]) -> None:
        assert self.spool is not None
        self.spool.append(topic, payloads.dumps(body), qos=1)

    def _spool_samples(self) -> None:
        if not self.sampler.enabled or self.spool is None:
            return
        self.sampler.refresh()
        for captured in self.sampler.drain():
            record = payloads.sample(self, captured)
            self.spool.put_sample(record["id"], record)
            self.spool_message(self.topics.samples, record)

    def _spool_metrics(self) -> None:
        assert self.spool is not None
        window = dict(self.stats.window(reset=True))
        extra = {
            "window": {"start": window.pop("start", None), "end": window.pop("end", None),
                       "seconds": window.pop("duration_s", None)},
            "process": {"rss_bytes": rss_bytes(), "cpu_percent": self._cpu.percent()},
            "system": device_reading(),
            "spool": {"queued": len(self.spool), "dropped_total": self.spool.dropped_total},
            "mqtt": {"connected": self._connected, **self.counters, **self.requests.take_counts(),
                     "samples_captured_total": self.sampler.captured_total,
                     "samples_rate_limited_total": self.sampler.rate_limited_total},
        }
        self.spool.append_counted(
            "metrics_seq", lambda seq: payloads.dumps(payloads.metrics(self, seq, window, extra)),
            self.topics.metrics,
        )

    def _pump(self) -> None:
        """Hand the oldest spooled rows to paho, at most INFLIGHT_WINDOW unacknowledged."""
        client = self._client
        if client is None or not self._connected or self.spool is None:
            return
        room = INFLIGHT_WINDOW - len(self._inflight)
        if room <= 0:
            return
        for msg in self.spool.pending(after_id=self._sent_upto, limit=room):
            info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                break  # paho keeps NO_CONN QoS-1 messages and sends them on reconnect
            self._inflight[info.mid] = msg.id
            self._sent_upto = msg.id

    def info(self) -> dict[str, Any]:
        return payloads.info(self, platform_info())

    # -- shutdown ---------------------------------------------------------------------------

    def _shutdown(self) -> None:
        client = self._client
        try:
            self._spool_samples()
            self._spool_metrics()  # the last, partial window is not lost: it is spooled
            if client is not None and self._connected:
                deadline = time.monotonic() + 2.0
                self._pump()
                while self._inflight and time.monotonic() < deadline:
                    self._process_events(0.05)
                    self._pump()
                info = self._publish_state(client, "disconnected")
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(timeout=2.0)
        except Exception:
            log.exception("error while shutting down telemetry")
        finally:
            if client is not None:
                client.disconnect()
                client.loop_stop()
            self._client = None
            self._connected = False
            self.sampler.detach()
            if self.spool is not None:
                self.spool.close()
                self.spool = None
