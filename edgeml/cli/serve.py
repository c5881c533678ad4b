"""``edgeml serve``: parse the options into one :class:`ServeSettings` and serve (device-safe).

Every option can also be set in the environment as ``EDGEML_SERVE_<OPTION>`` (upper case,
dashes as underscores: ``EDGEML_SERVE_PORT=9000``, ``EDGEML_SERVE_BROKER=mqtt://...``,
``EDGEML_SERVE_TLS_INSECURE=1``), for systemd units and containers; a command-line option
wins over the environment. Broker credentials are also read from ``$EDGEML_MQTT_USERNAME``
and ``$EDGEML_MQTT_PASSWORD``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgeml.cli.base import cli
from edgeml.cli.mqtt import LEVELS, setup_logging
from edgeml.runtime.http_protocol import Limits
from edgeml.runtime.settings import (
    MQTT_VERSIONS,
    BrokerSettings,
    HttpSettings,
    ServeSettings,
    TelemetrySettings,
)

_HTTP = HttpSettings()
_LIMITS = Limits()
_TELEMETRY = TelemetrySettings()
_SERVE = ServeSettings()


def _opt(*names: str, **kwargs: Any) -> Callable[[Any], Any]:
    """``click.option`` that shows its environment variable in ``--help``."""
    return click.option(*names, show_envvar=True, **kwargs)


@cli.command("serve")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
# -- HTTP ------------------------------------------------------------------------------
@_opt("--host", default=_HTTP.host, show_default=True, help="HTTP address to bind.")
@_opt("--port", default=_HTTP.port, show_default=True, type=int, help="HTTP port (0: any free).")
@_opt("--workers", default=_HTTP.workers, show_default=True, type=click.IntRange(0, 64),
      help="Event loops answering requests in parallel (0: one per core the process may use, "
           "by CPU affinity and cgroup quota, at most 4).")
@_opt("--threads", default=None, type=click.IntRange(1, 256), metavar="N",
      help="onnxruntime intra-op threads per model call (default: the bundle's manifest, "
           "else 1).")
@_opt("--max-batch", default=_SERVE.max_batch, show_default=True, type=click.IntRange(1),
      help="Largest number of rows in one request (HTTP and MQTT).")
@_opt("--max-body-bytes", default=None, type=click.IntRange(1), metavar="BYTES",
      help=f"Largest request body; larger ones get 413 (default: the device profile's, "
           f"else {_LIMITS.max_body_bytes}).")
@_opt("--max-connections", default=None, type=click.IntRange(1), metavar="N",
      help=f"Open connections at most; a new one beyond closes the least recently active "
           f"(default: the device profile's, else {_LIMITS.max_connections}).")
@_opt("--max-buffered-bytes", default=None, type=click.IntRange(1), metavar="BYTES",
      help=f"Request bytes held by all connections together (default: the device profile's, "
           f"else {_LIMITS.max_buffered_bytes}).")
@_opt("--idle-timeout", default=None, type=click.FloatRange(min=0, min_open=True),
      metavar="SECONDS", help=f"Close a keep-alive connection idle this long (default: the "
                              f"device profile's, else {_LIMITS.idle_timeout:g}).")
@_opt("--request-timeout", default=None, type=click.FloatRange(min=0, min_open=True),
      metavar="SECONDS", help=f"408 when a request has not arrived in full within this time "
                              f"(default: the device profile's, else {_LIMITS.request_timeout:g}).")
@_opt("--public-key", default=None, type=click.Path(dir_okay=False, path_type=Path),
      help="Ed25519 public key: refuse a bundle whose signature does not match.")
# -- MQTT broker -----------------------------------------------------------------------
@_opt("--broker", default=None, metavar="URL",
      help="MQTT broker, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]. Without it: HTTP only.")
@_opt("--username", default=None, envvar=["EDGEML_MQTT_USERNAME", "EDGEML_SERVE_USERNAME"],
      help="Broker user name.")
@_opt("--password", default=None, envvar=["EDGEML_MQTT_PASSWORD", "EDGEML_SERVE_PASSWORD"],
      help="Broker password (prefer the environment: arguments show in ps).")
@_opt("--tls-ca", default=None, type=click.Path(dir_okay=False),
      help="CA certificate file for mqtts:// (default: the system's CAs).")
@_opt("--tls-cert", default=None, type=click.Path(dir_okay=False),
      help="Client certificate (mutual TLS); needs --tls-key.")
@_opt("--tls-key", default=None, type=click.Path(dir_okay=False),
      help="Client private key (mutual TLS).")
@_opt("--tls-insecure", is_flag=True, help="Do not verify the broker's certificate (testing only).")
@_opt("--mqtt-version", default="auto", show_default=True, type=click.Choice(MQTT_VERSIONS),
      help="MQTT protocol; auto uses v5 and falls back to 3.1.1 brokers.")
@_opt("--keepalive", default=30, show_default=True, type=click.IntRange(5, 65535),
      metavar="SECONDS", help="MQTT keepalive.")
# -- telemetry -------------------------------------------------------------------------
@_opt("--device-id", default=None, metavar="ID",
      help="Device id, [a-z0-9-] (default: derived from the host name).")
@_opt("--fleet", default=_TELEMETRY.fleet, show_default=True, metavar="NAME",
      help="Fleet id, [a-z0-9-].")
@_opt("--base-topic", default=_TELEMETRY.base_topic, show_default=True,
      help="First topic level(s).")
@_opt("--metrics-interval", default=_TELEMETRY.metrics_interval, show_default=True, type=float,
      metavar="SECONDS", help="Seconds between two metrics messages.")
@_opt("--spool", "spool_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
      help="Store-and-forward folder (default: ~/.local/state/edgeml/<device>).")
@_opt("--spool-max-messages", default=_TELEMETRY.spool_max_messages, show_default=True,
      type=click.IntRange(1),
      help="Messages kept while offline; beyond that the oldest are dropped (and counted).")
@_opt("--spool-max-bytes", default=_TELEMETRY.spool_max_bytes, show_default=True,
      type=click.IntRange(1), help="Bytes kept while offline (same rule).")
@_opt("--sample-rate", default=_TELEMETRY.sample_rate, show_default=True,
      type=click.FloatRange(0, 1), help="Fraction of input rows published on .../samples "
                                        "(opt-in; 0 = off).")
@_opt("--sample-max-per-minute", default=_TELEMETRY.sample_max_per_minute, show_default=True,
      type=click.IntRange(0), help="Upper bound on published samples per minute.")
@_opt("--reconnect-max-delay", default=_TELEMETRY.reconnect_max_delay, show_default=True,
      type=click.IntRange(1), metavar="SECONDS",
      help="Longest wait between two reconnection attempts (backoff from 1 s).")
@_opt("--log-level", default="info", show_default=True, type=click.Choice(LEVELS),
      help="Logging level (stderr).")
def serve_command(
    bundle: Path,
    host: str,
    port: int,
    workers: int,
    threads: int | None,
    max_batch: int,
    max_body_bytes: int | None,
    max_connections: int | None,
    max_buffered_bytes: int | None,
    idle_timeout: float | None,
    request_timeout: float | None,
    public_key: Path | None,
    broker: str | None,
    username: str | None,
    password: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_insecure: bool,
    mqtt_version: str,
    keepalive: int,
    device_id: str | None,
    fleet: str,
    base_topic: str,
    metrics_interval: float,
    spool_dir: Path | None,
    spool_max_messages: int,
    spool_max_bytes: int,
    sample_rate: float,
    sample_max_per_minute: int,
    reconnect_max_delay: int,
    log_level: str,
) -> None:
    """Serve a bundle over HTTP and, with --broker, report to MQTT.

    With --broker the device publishes $state, $info, metrics every --metrics-interval
    seconds and (opt-in) samples; it answers inference requests and takes feedback
    labels over MQTT. Telemetry is spooled on disk while the broker is unreachable and
    sent in order when it is back. Stops cleanly on SIGTERM or Ctrl-C.

    Every option can also come from the environment: EDGEML_SERVE_PORT=9000,
    EDGEML_SERVE_BROKER=mqtt://..., and so on.
    """
    from edgeml.runtime.service import ServiceInfo, serve

    broker_settings = None
    if broker:
        broker_settings = BrokerSettings.from_url(
            broker, username=username, password=password, tls_ca=tls_ca, tls_cert=tls_cert,
            tls_key=tls_key, tls_insecure=tls_insecure or None, keepalive=keepalive,
            mqtt_version=mqtt_version,
        )
    settings = ServeSettings(
        http=HttpSettings(host=host, port=port, workers=workers, max_body_bytes=max_body_bytes,
                          max_connections=max_connections, max_buffered_bytes=max_buffered_bytes,
                          idle_timeout=idle_timeout, request_timeout=request_timeout),
        broker=broker_settings,
        telemetry=TelemetrySettings(
            device_id=device_id, fleet=fleet, base_topic=base_topic,
            metrics_interval=metrics_interval, spool_dir=spool_dir,
            spool_max_messages=spool_max_messages, spool_max_bytes=spool_max_bytes,
            sample_rate=sample_rate, sample_max_per_minute=sample_max_per_minute,
            reconnect_max_delay=reconnect_max_delay,
        ),
        max_batch=max_batch,
        intra_op_threads=threads,
        public_key=public_key,
    )
    setup_logging(log_level)

    def ready(info: ServiceInfo) -> None:
        click.echo(f"serving {info.model} ({info.task}) from {info.bundle}")
        click.echo(f"workers: {info.workers}, onnxruntime threads: {info.intra_op_threads}")
        click.echo(f"http: {info.http_url}")
        if info.broker:
            click.echo(
                f"mqtt: {info.broker} device {info.device} fleet {info.fleet} "
                f"session {info.session} spool {info.spool_dir}"
            )
            for role, topic in info.topics.items():
                click.echo(f"  {role:<15} {topic}")
        click.echo("press Ctrl-C to stop")

    serve(bundle, settings, on_ready=ready)
    click.echo("stopped")
