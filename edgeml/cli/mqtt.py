"""CLI commands of the mqtt layer: ``edgeml serve`` and ``edgeml broker`` (device-safe)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from edgeml.cli.base import cli

_LEVELS = ("debug", "info", "warning", "error")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.command("serve")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="HTTP port (0: any free).")
@click.option("--broker", default=None, metavar="URL",
              help="MQTT broker, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]. Without it: HTTP only.")
@click.option("--device-id", default=None, metavar="ID",
              help="Device id, [a-z0-9-] (default: derived from the host name).")
@click.option("--fleet", default="default", show_default=True, metavar="NAME",
              help="Fleet id, [a-z0-9-].")
@click.option("--base-topic", default="edgeml", show_default=True, help="First topic level(s).")
@click.option("--metrics-interval", default=10.0, show_default=True, type=float, metavar="SECONDS",
              help="Seconds between two metrics messages.")
@click.option("--spool", "spool_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Store-and-forward folder (default: ~/.local/state/edgeml/<device>).")
@click.option("--spool-max-messages", default=10_000, show_default=True, type=int,
              help="Messages kept while offline; beyond that the oldest are dropped (and counted).")
@click.option("--sample-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Fraction of input rows published on .../samples (opt-in; 0 = off).")
@click.option("--sample-max-per-minute", default=60, show_default=True, type=int,
              help="Upper bound on published samples per minute.")
@click.option("--public-key", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Ed25519 public key: refuse a bundle whose signature does not match.")
@click.option("--username", default=None, envvar="EDGEML_MQTT_USERNAME",
              help="Broker user name (or $EDGEML_MQTT_USERNAME).")
@click.option("--password", default=None, envvar="EDGEML_MQTT_PASSWORD",
              help="Broker password (prefer $EDGEML_MQTT_PASSWORD: arguments show in ps).")
@click.option("--tls-ca", default=None, type=click.Path(dir_okay=False),
              help="CA certificate file for mqtts:// (default: the system's CAs).")
@click.option("--tls-cert", default=None, type=click.Path(dir_okay=False),
              help="Client certificate (mutual TLS); needs --tls-key.")
@click.option("--tls-key", default=None, type=click.Path(dir_okay=False),
              help="Client private key (mutual TLS).")
@click.option("--tls-insecure", is_flag=True,
              help="Do not verify the broker's certificate (testing only).")
@click.option("--mqtt-version", default="auto", show_default=True,
              type=click.Choice(["auto", "5", "3.1.1"]),
              help="MQTT protocol; auto uses v5 and falls back to 3.1.1 brokers.")
@click.option("--reconnect-max-delay", default=30, show_default=True, type=int, metavar="SECONDS",
              help="Longest wait between two reconnection attempts (backoff from 1 s).")
@click.option("--max-batch", default=1024, show_default=True, type=int,
              help="Largest number of rows in one request (HTTP and MQTT).")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(_LEVELS),
              help="Logging level (stderr).")
def serve_command(
    bundle: Path,
    host: str,
    port: int,
    broker: str | None,
    device_id: str | None,
    fleet: str,
    base_topic: str,
    metrics_interval: float,
    spool_dir: Path | None,
    spool_max_messages: int,
    sample_rate: float,
    sample_max_per_minute: int,
    public_key: Path | None,
    username: str | None,
    password: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_insecure: bool,
    mqtt_version: str,
    reconnect_max_delay: int,
    max_batch: int,
    log_level: str,
) -> None:
    """Serve a bundle over HTTP and, with --broker, report to MQTT.

    With --broker the device publishes $state, $info, metrics every --metrics-interval
    seconds and (opt-in) samples; it answers inference requests and takes feedback
    labels over MQTT. Telemetry is spooled on disk while the broker is unreachable and
    sent in order when it is back. Stops cleanly on SIGTERM or Ctrl-C.
    """
    from edgeml.runtime.service import ServiceInfo, serve

    _setup_logging(log_level)

    def ready(info: ServiceInfo) -> None:
        click.echo(f"serving {info.model} ({info.task}) from {info.bundle}")
        click.echo(f"http: {info.http_url}")
        if info.broker:
            click.echo(
                f"mqtt: {info.broker} device {info.device} fleet {info.fleet} "
                f"session {info.session} spool {info.spool_dir}"
            )
            for role, topic in info.topics.items():
                click.echo(f"  {role:<15} {topic}")
        click.echo("press Ctrl-C to stop")

    serve(
        bundle, host=host, port=port, broker=broker, device_id=device_id, fleet=fleet,
        base_topic=base_topic, metrics_interval=metrics_interval, spool_dir=spool_dir,
        spool_max_messages=spool_max_messages, sample_rate=sample_rate,
        sample_max_per_minute=sample_max_per_minute, public_key=public_key, username=username,
        password=password, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
        tls_insecure=tls_insecure, mqtt_version=mqtt_version,
        reconnect_max_delay=reconnect_max_delay, max_batch=max_batch, on_ready=ready,
    )
    click.echo("stopped")


@cli.command("broker")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=1883, show_default=True, type=int, help="TCP port to listen on.")
@click.option("--log-level", default="warning", show_default=True, type=click.Choice(_LEVELS),
              help="Logging level (stderr).")
def broker_command(host: str, port: int, log_level: str) -> None:
    """Run a small embedded MQTT 3.1.1 broker (amqtt) for demos; needs edgeml[broker].

    No TLS and no authentication: keep it on 127.0.0.1 or a trusted network, and use
    Mosquitto in production. Stops on SIGTERM or Ctrl-C.
    """
    from edgeml.runtime.broker import EmbeddedBroker, run_broker

    _setup_logging(log_level)

    def ready(broker: EmbeddedBroker) -> None:
        click.echo(f"broker: {broker.url} (MQTT 3.1.1, anonymous)")
        click.echo("press Ctrl-C to stop")

    run_broker(host, port, on_ready=ready)
    click.echo("stopped")
