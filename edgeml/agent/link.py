"""The deploy agent's MQTT connection: commands and chunks in, reports (spooled) and requests out.

Its own MQTT session (``DeviceTopics.deploy_client_id``) beside the telemetry one, so a
large transfer never delays metrics and the telemetry code stays unaware of deployments.
MQTT v5 with ``clean_start=False`` and a one-hour session expiry (3.1.1:
``clean_session=False``): commands and chunks sent while the device is briefly away are
delivered when it is back. Subscriptions are renewed on every connect.

paho callbacks only queue events; :class:`~edgeml.agent.deployer.Deployer`'s thread reads
them with :meth:`DeployLink.events`. Reports go through an on-disk
:class:`~edgeml.runtime.spool.Spool` (the state folder's ``outbox/``): a report is sent
until the broker acknowledges it, across restarts. Device-safe.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgeml.runtime.mqtt_client import (
    BrokerSettings,
    connect_persistent,
    make_client,
    probe_protocol,
)
from edgeml.runtime.spool import Spool
from edgeml.runtime.topics import DeviceTopics

__all__ = ["DeployLink"]

log = logging.getLogger(__name__)

OUTBOX_WINDOW = 10


class DeployLink:
    def __init__(self, broker: BrokerSettings, topics: DeviceTopics, outbox: Path,
                 reconnect_max_delay: int = 30) -> None:
        self.broker = broker
        self.topics = topics
        self.outbox = Spool(outbox, max_messages=10_000, max_bytes=8 * 1024 * 1024)
        self.reconnect_max_delay = reconnect_max_delay
        self.connected = False
        self._client: mqtt.Client | None = None
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}
        self._sent_upto = 0
        self._next_probe = 0.0
        self._delay = 1.0

    # -- connection ---------------------------------------------------------------------

    def ensure(self) -> None:
        """Connect (once the broker answers); returns at once."""
        if self._client is not None or time.monotonic() < self._next_probe:
            return
        protocol = probe_protocol(self.broker, self.topics.deploy_client_id, timeout=2.0)
        if protocol is None:
            self._next_probe = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, float(self.reconnect_max_delay))
            return
        client = make_client(self.broker, self.topics.deploy_client_id, protocol)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(1, self.reconnect_max_delay)
        client.max_inflight_messages_set(64)
        connect_persistent(client, self.broker, protocol)
        self._client = client
        client.loop_start()

    def close(self) -> None:
        client = self._client
        if client is not None:
            deadline = time.monotonic() + 2.0
            while self.connected and self._inflight and time.monotonic() < deadline:
                self.pump_outbox()
                self.events(0.05)
            client.disconnect()
            client.loop_stop()
            self._client = None
        self.connected = False
        self.outbox.close()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.warning("broker %s refused the deploy connection: %s", self.broker.display, reason)
            return
        client.subscribe([(self.topics.deploy_set, 1), (self.topics.deploy_chunks, 1)])
        self._queue.put(("connected",))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        self._queue.put(("subscribed",))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._queue.put(("disconnected",))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put(("message", message.topic, bytes(message.payload)))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        self._queue.put(("puback", mid))

    # -- events (the deployer's thread) ---------------------------------------------------

    def events(self, wait: float) -> list[tuple[Any, ...]]:
        """Queued events, waiting up to ``wait`` s for the first. Link events are handled here."""
        out: list[tuple[Any, ...]] = []
        try:
            first = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
            return out
        event: tuple[Any, ...] | None = first
        while event is not None:
            kind = event[0]
            if kind == "puback":
                row = self._inflight.pop(event[1], None)
                if row is not None:
                    self.outbox.ack(row)
            else:
                if kind == "connected":
                    self.connected = True
                    self._inflight.clear()
                    self._sent_upto = 0
                elif kind == "disconnected":
                    self.connected = False
                out.append(event)
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                event = None
        return out

    def report(self, build: Callable[[int], bytes]) -> None:
        """Spool ``build(seq)`` (durably, with the next report seq) for the deploy topic."""
        self.outbox.append_counted("report_seq", build, self.topics.deploy)

    def pump_outbox(self) -> None:
        client = self._client
        if client is None or not self.connected:
            return
        room = OUTBOX_WINDOW - len(self._inflight)
        if room <= 0:
            return
        for msg in self.outbox.pending(after_id=self._sent_upto, limit=room):
            info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                break
            self._inflight[info.mid] = msg.id
            self._sent_upto = msg.id

    def publish(self, topic: str, payload: bytes) -> None:
        """Send a message that is not worth spooling (chunk requests are asked again anyway)."""
        client = self._client
        if client is not None and self.connected:
            with contextlib.suppress(ValueError, RuntimeError):
                client.publish(topic, payload, qos=1)
