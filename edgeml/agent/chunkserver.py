"""The controller side of the transfer: answer chunk requests from bundle files, send commands.

``ChunkServer(broker, base)`` subscribes to every device's ``deploy/chunks/get``
(optionally as an MQTT v5 shared subscription ``group``, so several servers split the
requests) and answers each with the chunks asked for, read from the offered files on
demand. :meth:`ChunkServer.offer` registers a bundle and returns its
:class:`~edgeml.agent.protocol.BundleOffer`; :meth:`ChunkServer.deploy` publishes a
command to one device. The encoding is :mod:`edgeml.agent.protocol`'s, shared with the agent.
Used by the tests and the benchmark now and by the fleet controller later. Device-safe.

``mangle`` (tests): ``mangle(device, [(index, payload), ...]) -> [payload, ...]`` rewrites
the answer to one request: drop, corrupt, truncate, duplicate or reorder chunks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgeml.agent.protocol import (
    BundleOffer,
    ChunkRequest,
    Command,
    Gates,
    ProtocolError,
    encode_chunk,
    encode_chunk_error,
)
from edgeml.bundle.reader import open_bundle
from edgeml.runtime import topics
from edgeml.runtime.mqtt_client import BrokerSettings, make_client

__all__ = ["DEFAULT_CHUNK_SIZE", "ChunkServer", "Mangle"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 64 * 1024
Mangle = Callable[[str, list[tuple[int, bytes]]], list[bytes]]


@dataclass
class _Offered:
    path: Path
    offer: BundleOffer


class ChunkServer:
    def __init__(self, broker: BrokerSettings, base: str = topics.DEFAULT_BASE, *,
                 group: str | None = None, client_id: str | None = None,
                 mangle: Mangle | None = None) -> None:
        self.broker = broker
        self.base = topics.validate_base(base)
        self.group = group
        self.mangle = mangle
        self.requests = 0
        self.chunks_sent = 0
        self._offers: dict[str, _Offered] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        cid = client_id or f"edgeml-chunks-{os.getpid()}-{id(self) & 0xffffff:x}"
        self._client = make_client(broker, cid, mqtt.MQTTv5)
        self._client.max_inflight_messages_set(256)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> ChunkServer:
        self._client.connect(self.broker.host, self.broker.port, self.broker.keepalive,
                             clean_start=True)
        self._client.loop_start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"chunk server: no subscription on {self.broker.display}")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> ChunkServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        wanted = topics.all_devices_filter(self.base, topics.DEPLOY_CHUNKS_GET)
        if self.group:
            wanted = topics.shared_filter(self.group, wanted)
        client.subscribe(wanted, qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        self._ready.set()

    # -- offers and commands ----------------------------------------------------------------

    def offer(self, path: str | Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BundleOffer:
        """Serve the bundle at ``path``; its offer carries the manifest's hints."""
        p = Path(path)
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        man = open_bundle(p).manifest
        offer = BundleOffer(digest, p.stat().st_size, chunk_size, man.name, man.version,
                            man.target.name, man.target.arch)
        with self._lock:
            self._offers[digest] = _Offered(p, offer)
        return offer

    def deploy(self, fleet: str, device: str, deployment_id: str, offer: BundleOffer, *,
               soak_s: float = 30.0, allow_downgrade: bool = False,
               gates: Gates | None = None, hints: bool = True) -> Command:
        """Publish an install command to one device (QoS 1). ``hints=False`` omits the
        name/version/target/arch hints (the device then finds out from the manifest)."""
        if not hints:
            offer = BundleOffer(offer.sha256, offer.size, offer.chunk_size)
        cmd = Command(deployment_id, "install", offer, allow_downgrade, soak_s, gates or Gates())
        self.send(fleet, device, cmd)
        return cmd

    def send(self, fleet: str, device: str, cmd: Command) -> None:
        t = topics.DeviceTopics.create(self.base, fleet, device)
        self._client.publish(t.deploy_set, cmd.encode(), qos=1).wait_for_publish(10.0)

    # -- answering --------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = topics.parse_topic(self.base, message.topic)
        if parsed is None or parsed[2] != topics.DEPLOY_CHUNKS_GET:
            return
        fleet, device, _ = parsed
        try:
            req = ChunkRequest.decode(bytes(message.payload))
        except ProtocolError as exc:
            log.warning("bad chunk request from %s/%s: %s", fleet, device, exc)
            return
        self.requests += 1
        reply = topics.DeviceTopics.create(self.base, fleet, device).deploy_chunks
        with self._lock:
            offered = self._offers.get(req.sha256)
        if offered is None or offered.offer.chunk_size != req.chunk_size:
            client.publish(reply, encode_chunk_error(req.sha256, "bundle not offered here"), qos=1)
            return
        offer = offered.offer
        out: list[tuple[int, bytes]] = []
        with open(offered.path, "rb") as fh:
            for index in req.chunks:
                if index >= offer.count:
                    continue
                fh.seek(index * offer.chunk_size)
                data = fh.read(offer.length(index))
                out.append((index, encode_chunk(offer.sha256, index, offer.count, data)))
        payloads = self.mangle(device, out) if self.mangle else [p for _, p in out]
        for payload in payloads:
            client.publish(reply, payload, qos=1)
            self.chunks_sent += 1
