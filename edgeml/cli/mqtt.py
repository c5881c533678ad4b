"""``edgeml broker`` (device-safe), and the logging setup it shares with ``edgeml serve``."""

from __future__ import annotations

import logging
import sys

import click

from edgeml.cli.base import cli

LEVELS = ("debug", "info", "warning", "error")


def setup_logging(level: str) -> None:
    """Log records of ``level`` and above to stderr, one line each."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.command("broker")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=1883, show_default=True, type=int, help="TCP port to listen on.")
@click.option("--log-level", default="warning", show_default=True, type=click.Choice(LEVELS),
              help="Logging level (stderr).")
def broker_command(host: str, port: int, log_level: str) -> None:
    """Run a small embedded MQTT 3.1.1 broker (amqtt) for demos; needs edgeml[broker].

    No TLS and no authentication: keep it on 127.0.0.1 or a trusted network, and use
    Mosquitto in production. Stops on SIGTERM or Ctrl-C.
    """
    from edgeml.runtime.broker import EmbeddedBroker, run_broker

    setup_logging(log_level)

    def ready(broker: EmbeddedBroker) -> None:
        click.echo(f"broker: {broker.url} (MQTT 3.1.1, anonymous)")
        click.echo("press Ctrl-C to stop")

    run_broker(host, port, on_ready=ready)
    click.echo("stopped")
