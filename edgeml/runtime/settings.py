"""The settings of ``edgeml serve``: one frozen, typed object from the CLI to the service.

:class:`ServeSettings` nests :class:`HttpSettings` (address, limits, workers),
:class:`BrokerSettings` (where and how to reach MQTT; ``None`` for HTTP only) and
:class:`TelemetrySettings` (device identity, metrics, spool, sampling). The CLI builds it
once (every option may also come from ``$EDGEML_SERVE_<OPTION>``); :func:`edgeml.runtime.
service.serve` and everything below it read it and never copy its fields into keyword
arguments. Values are checked when the object is built (:class:`~edgeml.errors.UsageError`).

Device-safe: standard library only.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeml.errors import UsageError
from edgeml.runtime.spool import DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES
from edgeml.runtime.topics import DEFAULT_BASE, DEFAULT_FLEET

__all__ = [
    "MQTT_VERSIONS",
    "BrokerSettings",
    "HttpSettings",
    "ServeSettings",
    "TelemetrySettings",
    "default_workers",
]

MQTT_VERSIONS = ("auto", "5", "3.1.1")
MAX_AUTO_WORKERS = 4


def default_workers() -> int:
    """One worker per core this process may use, at most 4.

    The cores are its CPU affinity (``taskset``, systemd ``CPUAffinity=``), bounded by a cgroup
    v2 CPU quota (``docker --cpus``, systemd ``CPUQuota=``) when there is one.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, min(cores, MAX_AUTO_WORKERS))


def _cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """Whole CPUs allowed by cgroup v2's ``cpu.max`` (``"max 100000"``: no quota), rounded up."""
    try:
        with open(path) as fh:
            quota, period = fh.read().split()[:2]
        if quota == "max":
            return None
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP server: where it listens, what it accepts, how many model calls run at once.

    A limit left ``None`` comes from the device profile recorded in the bundle
    (``manifest.target.serve``), else :class:`edgeml.runtime.http_protocol.Limits`' default.
    """

    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port
    workers: int = 0  # event loops serving connections in parallel; 0: default_workers()
    max_body_bytes: int | None = None
    max_connections: int | None = None  # beyond: the least recently active one is dropped
    max_buffered_bytes: int | None = None  # request bytes held across all connections
    idle_timeout: float | None = None  # keep-alive connection with no request in progress
    request_timeout: float | None = None  # from the first byte of a request to its last

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port {self.port} must be between 0 and 65535")
        if not 0 <= self.workers <= 64:
            raise UsageError(f"workers {self.workers} must be between 0 (auto) and 64")
        for name in ("max_body_bytes", "max_connections", "max_buffered_bytes",
                     "idle_timeout", "request_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"{name.replace('_', ' ')} {value} must be > 0")

    @property
    def worker_count(self) -> int:
        """``workers``, or one per available core when it is 0."""
        return self.workers or default_workers()


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect to MQTT. Never printed with its password (see :meth:`display`).

    ``BrokerSettings.from_url("mqtt://host:1883")`` (``mqtts://`` for TLS, default port 8883).
    """

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
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


@dataclass(frozen=True)
class TelemetrySettings:
    """What the device reports over MQTT, under which names, and what it keeps while offline."""

    device_id: str | None = None  # None: derived from the host name
    fleet: str = DEFAULT_FLEET
    base_topic: str = DEFAULT_BASE
    metrics_interval: float = 10.0
    spool_dir: Path | None = None  # None: ~/.local/state/edgeml/<device>
    spool_max_messages: int = DEFAULT_MAX_MESSAGES
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    sample_rate: float = 0.0
    sample_max_per_minute: int = 60
    reconnect_max_delay: int = 30

    def __post_init__(self) -> None:
        if not self.metrics_interval > 0:
            raise UsageError(f"metrics interval {self.metrics_interval} must be > 0 seconds")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise UsageError(f"sample rate {self.sample_rate} must be between 0 and 1")
        if self.spool_max_messages < 1 or self.spool_max_bytes < 1:
            raise UsageError("the spool bounds must be at least 1 message and 1 byte")
        if self.sample_max_per_minute < 0:
            raise UsageError(f"samples per minute {self.sample_max_per_minute} must be >= 0")
        if self.reconnect_max_delay < 1:
            raise UsageError(f"reconnect delay {self.reconnect_max_delay} must be >= 1 second")


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``edgeml serve`` needs besides the bundle."""

    http: HttpSettings = field(default_factory=HttpSettings)
    broker: BrokerSettings | None = None  # None: HTTP only
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    max_batch: int = 1024  # rows in one request, HTTP and MQTT
    intra_op_threads: int | None = None  # None: what the bundle's manifest says (default 1)
    public_key: Path | None = None  # refuse a bundle whose signature does not match

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise UsageError(f"max batch {self.max_batch} must be at least 1 row")
        if self.intra_op_threads is not None and not 1 <= self.intra_op_threads <= 256:
            raise UsageError(f"threads {self.intra_op_threads} must be between 1 and 256")
