"""Broker connection settings, paho-mqtt client construction and MQTT protocol detection.

``BrokerSettings.from_url("mqtt://host:1883")`` (``mqtts://`` for TLS, default port 8883)
holds everything a connection needs: credentials, TLS files, keepalive and the MQTT
version. :func:`make_client` builds a paho-mqtt 2.x client with VERSION2 callbacks.

MQTT version: ``"5"``, ``"3.1.1"`` or ``"auto"`` (default). In auto mode
:func:`probe_protocol` opens one short connection with MQTT v5 *without* a will:
a v5 CONNACK means v5; "unsupported protocol version" (0x84, or 3.1.1's 0x01) means
3.1.1. The probe exists because a 3.1.1-only broker such as amqtt (the embedded
``edgeml broker``) does not answer at all when a v5 CONNECT carries a will (it
misreads the v5 will properties), so waiting for a refusing CONNACK would hang.

Device-safe: standard library and paho-mqtt only.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeml.errors import UsageError

__all__ = [
    "MQTT_VERSIONS",
    "BrokerSettings",
    "connect_properties",
    "make_client",
    "probe_protocol",
    "protocol_name",
]

MQTT_VERSIONS = ("auto", "5", "3.1.1")
_PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
_UNSUPPORTED_PROTOCOL = (1, 0x84)  # 3.1.1 CONNACK 0x01 / v5 reason code 0x84


def protocol_name(protocol: int | None) -> str | None:
    if protocol is None:
        return None
    return "5" if protocol == mqtt.MQTTv5 else "3.1.1"


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect. Never printed with its password (see :meth:`display`)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    keepalive: int = 30
    mqtt_version: str = "auto"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> BrokerSettings:
        """Parse ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...``.

        Keyword options (username, password, tls_ca...) win over the URL; ``None`` ones are ignored.
        """
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parsed.hostname:
            raise UsageError(
                f"broker {url!r} is not valid: use mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
            )
        if parsed.path not in ("", "/") or parsed.query:
            raise UsageError(f"broker {url!r}: a broker URL has no path or query")
        tls = parsed.scheme in ("mqtts", "ssl")
        try:
            port = parsed.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise UsageError(f"broker {url!r}: {exc}") from exc
        values: dict[str, Any] = {
            "username": urllib.parse.unquote(parsed.username) if parsed.username else None,
            "password": urllib.parse.unquote(parsed.password) if parsed.password else None,
        }
        values.update({k: v for k, v in options.items() if v is not None})
        settings = cls(host=parsed.hostname, port=port, tls=tls, **values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.mqtt_version not in MQTT_VERSIONS:
            raise UsageError(
                f"MQTT version {self.mqtt_version!r} is not one of {', '.join(MQTT_VERSIONS)}"
            )
        if self.password is not None and self.username is None:
            raise UsageError("a broker password needs a username")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("TLS client authentication needs both --tls-cert and --tls-key")
        if not self.tls and (self.tls_ca or self.tls_cert or self.tls_insecure):
            raise UsageError("TLS options need an mqtts:// broker URL")
        for option, path in (("--tls-ca", self.tls_ca), ("--tls-cert", self.tls_cert),
                             ("--tls-key", self.tls_key)):
            if path is not None and not os.path.isfile(path):
                raise UsageError(f"{option} {path}: no such file")
        if not 5 <= self.keepalive <= 65535:
            raise UsageError(f"keepalive {self.keepalive} must be between 5 and 65535 seconds")

    @property
    def display(self) -> str:
        """The URL without the password."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


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
