"""CLI command ``edgeml monitor`` (host side): parses options and runs :class:`Monitor`."""

from __future__ import annotations

import logging
import sys

import click

from edgeml.cli.base import cli


@cli.command("monitor")
@click.option("--broker", required=True, metavar="URL",
              help="MQTT v5 broker, mqtt://HOST[:PORT] or mqtts://HOST[:PORT].")
@click.option("--db", "db", default=None, metavar="URL", envvar="EDGEML_FLEET_DB",
              help="Fleet store (default: $EDGEML_FLEET_DB, else sqlite:///fleet.db); "
                   "create it first with `edgeml fleet db upgrade`.")
@click.option("--group", default="edgeml", show_default=True, metavar="NAME",
              help="Shared-subscription group: monitors of one group split the fleet.")
@click.option("--base-topic", default="edgeml", show_default=True, help="First topic level(s).")
@click.option("--client-id", default=None, metavar="ID",
              help="MQTT client id; its session keeps messages while the monitor is down "
                   "(default: edgeml-monitor-<group>-<host>; give each monitor its own).")
@click.option("--http", "http_port", default=None, type=int, metavar="PORT",
              help="Serve Prometheus /metrics on this port (0: any free port).")
@click.option("--http-host", default="127.0.0.1", show_default=True,
              help="Address for --http (loopback by default).")
@click.option("--dashboard", is_flag=True,
              help="Serve the fleet dashboard on the --http port too (/metrics stays a route).")
@click.option("--token", default=None, envvar="EDGEML_DASHBOARD_TOKEN",
              help="Token every request to --http needs with --dashboard (required for a "
                   "non-loopback --http-host; or $EDGEML_DASHBOARD_TOKEN).")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              help="Read the --dashboard token from the first line of this file.")
@click.option("--workers", default=1, show_default=True, type=int, metavar="N",
              help="Monitor processes in the group on this machine (client ids <id>-w<i>, "
                   "--http ports PORT+i): the way past one core's ingest rate.")
@click.option("--batch-size", default=1000, show_default=True, type=int,
              help="Messages per transaction at most.")
@click.option("--batch-seconds", default=0.1, show_default=True, type=float,
              help="Longest wait for a batch to fill.")
@click.option("--session-expiry", default=86_400, show_default=True, type=int, metavar="SECONDS",
              help="How long the broker keeps the monitor's messages while it is down.")
@click.option("--retain-days", default=None, type=float, metavar="N",
              help="Roll windows older than N days up per hour (checked hourly).")
@click.option("--evaluate-every", default=None, type=float, metavar="SECONDS",
              help="Judge drift, decay and health and raise alerts every SECONDS.")
@click.option("--thresholds", default=None, metavar="FILE",
              help="Thresholds YAML for --evaluate-every (default: the packaged one).")
@click.option("--username", default=None, envvar="EDGEML_MQTT_USERNAME",
              help="Broker user name (or $EDGEML_MQTT_USERNAME).")
@click.option("--password", default=None, envvar="EDGEML_MQTT_PASSWORD",
              help="Broker password (prefer $EDGEML_MQTT_PASSWORD).")
@click.option("--tls-ca", default=None, type=click.Path(dir_okay=False),
              help="CA certificate file for mqtts://.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="Logging level (stderr).")
def monitor_command(broker: str, db: str | None, group: str, base_topic: str,
                    client_id: str | None, http_port: int | None, http_host: str,
                    dashboard: bool, token: str | None, token_file: str | None,
                    workers: int, batch_size: int, batch_seconds: float, session_expiry: int,
                    retain_days: float | None, evaluate_every: float | None,
                    thresholds: str | None, username: str | None, password: str | None,
                    tls_ca: str | None, log_level: str) -> None:
    """Store what the devices publish (metrics, samples, feedback, $state, $info) in SQL.

    QoS 1 messages are acknowledged only once committed: a monitor killed with kill -9
    loses nothing (the broker redelivers, duplicates are dropped). Runs until Ctrl-C/SIGTERM.
    """
    logging.basicConfig(level=getattr(logging, log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from edgeml.fleet.monitor import MonitorSettings, run_monitor

    run_monitor(MonitorSettings(
        broker=broker, db=db, group=group, base_topic=base_topic, client_id=client_id,
        http_port=http_port, http_host=http_host, dashboard=dashboard, token=token,
        token_file=token_file, workers=workers, batch_size=batch_size,
        batch_seconds=batch_seconds, session_expiry=session_expiry, retain_days=retain_days,
        evaluate_every=evaluate_every, thresholds=thresholds, username=username,
        password=password, tls_ca=tls_ca,
    ))
