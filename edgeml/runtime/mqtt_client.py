"""Broker connection settings, paho-mqtt client construction and MQTT protocol detection.

:class:`~edgeml.runtime.settings.BrokerSettings` (re-exported here) holds everything a
connection needs: credentials, TLS files, keepalive and the MQTT version.
:func:`make_client` builds a paho-mqtt 2.x client with VERSION2 callbacks.

MQTT version: ``"5"``, ``"3.1.1"`` or ``"auto"`` (default). In auto mode
:func:`probe_protocol` opens one short connection with MQTT v5 *without* a will:
a v5 CONNACK means v5; "unsupported protocol version" (0x84, or 3.1.1's 0x01) means
3.1.1. The probe exists because a 3.1.1-only broker such as amqtt (the embedded
``edgeml broker``) does not answer at all when a v5 CONNECT carries a will (it
misreads the v5 will properties), so waiting for a refusing CONNACK would hang.

Device-safe: standard library and paho-mqtt only.
"""

from __future__ import annotations

import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeml.errors import UsageError
from edgeml.runtime.settings import MQTT_VERSIONS, BrokerSettings

__all__ = [
    "MQTT_VERSIONS",
    "SESSION_EXPIRY_S",
    "BrokerSettings",
    "connect_persistent",
    "connect_properties",
    "make_client",
    "probe_protocol",
    "protocol_name",
]

SESSION_EXPIRY_S = 3600  # the broker keeps a dropped device's session (and its QoS 1 queue) this long
_PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
_UNSUPPORTED_PROTOCOL = (1, 0x84)  # 3.1.1 CONNACK 0x01 / v5 reason code 0x84


def protocol_name(protocol: int | None) -> str | None:
    if protocol is None:
        return None
    return "5" if protocol == mqtt.MQTTv5 else "3.1.1"


def make_client(
    settings: BrokerSettings, client_id: str, protocol: MQTTProtocolVersion
) -> mqtt.Client:
    """A paho client (VERSION2 callbacks) with credentials and TLS applied; not yet connected.

    MQTT 3.1.1 clients ask for a persistent session (``clean_session=False``); for v5 the
    equivalent is passed to ``connect`` (see :func:`connect_properties`).
    """
    kwargs: dict[str, Any] = {}
    if protocol != mqtt.MQTTv5:
        kwargs["clean_session"] = False
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        try:
            client.tls_set(
                ca_certs=settings.tls_ca,
                certfile=settings.tls_cert,
                keyfile=settings.tls_key,
                cert_reqs=ssl.CERT_NONE if settings.tls_insecure else ssl.CERT_REQUIRED,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UsageError(f"TLS settings cannot be used: {exc}") from exc
        if settings.tls_insecure:
            client.tls_insecure_set(True)
    return client


def connect_properties(protocol: MQTTProtocolVersion, session_expiry: int) -> Properties | None:
    """CONNECT properties for v5: keep the session ``session_expiry`` seconds after a drop."""
    if protocol != mqtt.MQTTv5:
        return None
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry
    return props


def connect_persistent(
    client: mqtt.Client, settings: BrokerSettings, protocol: MQTTProtocolVersion,
    session_expiry: int = SESSION_EXPIRY_S,
) -> None:
    """``connect_async`` asking for a persistent session: v5 ``clean_start=False`` with a
    session expiry (3.1.1 clients got ``clean_session=False`` in :func:`make_client`)."""
    kwargs: dict[str, Any] = {}
    if protocol == mqtt.MQTTv5:
        kwargs = {"clean_start": False, "properties": connect_properties(protocol, session_expiry)}
    client.connect_async(settings.host, settings.port, settings.keepalive, **kwargs)


def probe_protocol(
    settings: BrokerSettings, client_id: str, timeout: float = 3.0
) -> MQTTProtocolVersion | None:
    """Which MQTT version does the broker speak? ``MQTTv5``, ``MQTTv311``, or None if unreachable.

    A refusal for any other reason (bad credentials, not authorized) still proves v5 and
    returns ``MQTTv5``: the real connection then reports the refusal.
    """
    if settings.mqtt_version != "auto":
        return _PROTOCOLS[settings.mqtt_version]
    client = make_client(settings, f"{client_id}-probe"[:128], mqtt.MQTTv5)
    result: dict[str, MQTTProtocolVersion] = {}
    done = threading.Event()

    def on_connect(c: mqtt.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        code = int(getattr(rc, "value", rc))
        result["protocol"] = mqtt.MQTTv311 if code in _UNSUPPORTED_PROTOCOL else mqtt.MQTTv5
        done.set()

    def on_disconnect(c: mqtt.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        # Closed before any CONNACK: a 3.1.1 broker dropping an unknown protocol level.
        result.setdefault("protocol", mqtt.MQTTv311)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(settings.host, settings.port, keepalive=10, clean_start=True)
    except (OSError, ssl.SSLError):
        return None
    deadline = time.monotonic() + timeout
    try:
        while not done.is_set() and time.monotonic() < deadline:
            if client.loop(timeout=0.1) not in (mqtt.MQTT_ERR_SUCCESS,) and not done.is_set():
                result.setdefault("protocol", mqtt.MQTTv311)
                break
    finally:
        if client.is_connected():
            client.disconnect()
            client.loop(timeout=0.1)
        sock = client.socket()
        if sock is not None:  # refused or timed out: close it ourselves, the client is discarded
            sock.close()
    return result.get("protocol")
