"""``edgeml agent``: the long-running device process (serve the current slot, take deploys).

Settings come from, in this order of precedence: command-line flags, the environment
(``EDGEML_AGENT_<OPTION>``: ``EDGEML_AGENT_PORT=9000``; the state folder also from systemd's
``$STATE_DIRECTORY``; broker credentials also from ``$EDGEML_MQTT_USERNAME`` /
``$EDGEML_MQTT_PASSWORD``), the ``--config`` file (JSON or the YAML subset of
:mod:`edgeml.agent.config`), then the defaults. Device-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgeml.cli.base import cli
from edgeml.cli.mqtt import LEVELS, setup_logging
from edgeml.errors import UsageError
from edgeml.runtime.settings import (
    MQTT_VERSIONS,
    BrokerSettings,
    HttpSettings,
    ServeSettings,
    TelemetrySettings,
)

_TELEMETRY = TelemetrySettings()


def _opt(*names: str, **kwargs: Any) -> Callable[[Any], Any]:
    return click.option(*names, show_envvar=True, **kwargs)


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        from edgeml.agent.config import load_config

        ctx.default_map = {**(ctx.default_map or {}), **load_config(value)}
    return value


@cli.group("agent", invoke_without_command=True)
@click.pass_context
@_opt("--config", default=None, is_eager=True, expose_value=False, callback=_load_config,
      type=click.Path(dir_okay=False), help="Config file: JSON, or the YAML subset the README "
                                            "describes (flags and environment win over it).")
@_opt("--state-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
      envvar=["EDGEML_AGENT_STATE_DIR", "STATE_DIRECTORY"],
      help="State folder: slots, current pointer, downloads, spools ($STATE_DIRECTORY under "
           "systemd).")
@_opt("--bundle", default=None, type=click.Path(dir_okay=False, path_type=Path),
      help="First bundle, installed when the state folder has none.")
@_opt("--public-key", default=None, type=click.Path(dir_okay=False, path_type=Path),
      help="Ed25519 public key: deployed bundles must be signed with its private key.")
@_opt("--allow-unsigned", is_flag=True, default=False,
      help="Accept bundles without a signature (and run without --public-key).")
@_opt("--target", default=None, metavar="PROFILE",
      help="This device's profile (x86_64, rpi4...): bundles for another are refused.")
@_opt("--arch", default=None, help="This device's architecture (default: the machine's).")
@_opt("--window", default=8, show_default=True, type=click.IntRange(1, 256),
      help="Chunks in flight during a transfer.")
@_opt("--chunk-timeout", default=3.0, show_default=True, type=click.FloatRange(min=0.1),
      metavar="SECONDS", help="Ask again for a chunk not received within this time (also "
                              "the timeout of each HTTP read of a bundle URL).")
@_opt("--http-token", default=None, metavar="TOKEN",
      help="Bearer token for bundle URLs (HTTP(S) downloads; prefer the environment).")
@_opt("--host", default="127.0.0.1", show_default=True, help="HTTP address to bind.")
@_opt("--port", default=8080, show_default=True, type=int, help="HTTP port (0: any free).")
@_opt("--workers", default=0, show_default=True, type=click.IntRange(0, 64),
      help="HTTP event loops (0: one per core, at most 4).")
@_opt("--threads", default=None, type=click.IntRange(1, 256), metavar="N",
      help="onnxruntime intra-op threads (default: the bundle's manifest).")
@_opt("--max-batch", default=1024, show_default=True, type=click.IntRange(1),
      help="Largest number of rows in one request.")
@_opt("--broker", default=None, metavar="URL", help="MQTT broker, mqtt://HOST[:PORT] or "
                                                    "mqtts://HOST[:PORT] (required).")
@_opt("--username", default=None, envvar=["EDGEML_MQTT_USERNAME", "EDGEML_AGENT_USERNAME"],
      help="Broker user name.")
@_opt("--password", default=None, envvar=["EDGEML_MQTT_PASSWORD", "EDGEML_AGENT_PASSWORD"],
      help="Broker password (prefer the environment).")
@_opt("--tls-ca", default=None, type=click.Path(dir_okay=False), help="CA file for mqtts://.")
@_opt("--tls-cert", default=None, type=click.Path(dir_okay=False), help="Client certificate.")
@_opt("--tls-key", default=None, type=click.Path(dir_okay=False), help="Client private key.")
@_opt("--tls-insecure", is_flag=True, default=False, help="Do not verify the broker (testing).")
@_opt("--mqtt-version", default="auto", show_default=True, type=click.Choice(MQTT_VERSIONS),
      help="MQTT protocol.")
@_opt("--keepalive", default=30, show_default=True, type=click.IntRange(5, 65535),
      metavar="SECONDS", help="MQTT keepalive.")
@_opt("--device-id", default=None, metavar="ID", help="Device id (default: the host name).")
@_opt("--fleet", default=_TELEMETRY.fleet, show_default=True, metavar="NAME", help="Fleet id.")
@_opt("--base-topic", default=_TELEMETRY.base_topic, show_default=True,
      help="First topic level(s).")
@_opt("--metrics-interval", default=_TELEMETRY.metrics_interval, show_default=True,
      type=float, metavar="SECONDS", help="Seconds between two metrics messages.")
@_opt("--sample-rate", default=_TELEMETRY.sample_rate, show_default=True,
      type=click.FloatRange(0.0, 1.0), help="Fraction of input rows published on .../samples "
      "(opt-in; 0 = off), as `edgeml serve`.")
@_opt("--sample-max-per-minute", default=_TELEMETRY.sample_max_per_minute, show_default=True,
      type=click.IntRange(0), metavar="N", help="Upper bound on published samples per minute.")
@_opt("--reconnect-max-delay", default=_TELEMETRY.reconnect_max_delay, show_default=True,
      type=click.IntRange(1), metavar="SECONDS", help="Longest wait between reconnections.")
@_opt("--log-level", default="info", show_default=True, type=click.Choice(LEVELS),
      help="Logging level (stderr).")
def agent_command(
    ctx: click.Context, state_dir: Path | None, bundle: Path | None, public_key: Path | None, allow_unsigned: bool,
    target: str | None, arch: str | None, window: int, chunk_timeout: float, host: str,
    port: int, workers: int, threads: int | None, max_batch: int, broker: str | None,
    username: str | None, password: str | None, tls_ca: str | None, tls_cert: str | None,
    tls_key: str | None, tls_insecure: bool, mqtt_version: str, keepalive: int,
    device_id: str | None, fleet: str, base_topic: str, metrics_interval: float,
    sample_rate: float, sample_max_per_minute: int, reconnect_max_delay: int, log_level: str,
    http_token: str | None,
) -> None:
    """Serve the current model slot and take over-the-air deploys from MQTT.

    Serves exactly like `edgeml serve` (HTTP and telemetry). Deploy commands arrive on
    .../deploy/set; the bundle is pulled in chunks into the inactive slot, verified, switched
    to without dropping a request, tried for a soak period, then committed or rolled back.
    Every step is reported on .../deploy. `edgeml agent install-service` writes the systemd
    unit that runs it.
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgeml.agent.config import AgentSettings
    from edgeml.agent.install import InstallPolicy, device_arch, normalize_arch
    from edgeml.agent.service import AgentInfo, run_agent

    if state_dir is None:
        raise UsageError("the agent needs a state folder: --state-dir DIR (or $STATE_DIRECTORY)")
    if broker is None:
        raise UsageError("the agent needs a broker: --broker mqtt://HOST[:PORT]")
    state_dir = Path(str(state_dir).split(":")[0])  # systemd may list several
    broker_settings = BrokerSettings.from_url(
        broker, username=username, password=password, tls_ca=tls_ca, tls_cert=tls_cert,
        tls_key=tls_key, tls_insecure=tls_insecure or None, keepalive=keepalive,
        mqtt_version=mqtt_version)
    settings = AgentSettings(
        state_dir=state_dir,
        serve=ServeSettings(
            http=HttpSettings(host=host, port=port, workers=workers),
            broker=broker_settings,
            telemetry=TelemetrySettings(device_id=device_id, fleet=fleet, base_topic=base_topic,
                                        metrics_interval=metrics_interval,
                                        sample_rate=sample_rate,
                                        sample_max_per_minute=sample_max_per_minute,
                                        reconnect_max_delay=reconnect_max_delay),
            max_batch=max_batch, intra_op_threads=threads),
        policy=InstallPolicy(arch=normalize_arch(arch) if arch else device_arch(),
                             target=target, public_key=public_key,
                             allow_unsigned=allow_unsigned),
        bundle=bundle, window=window, chunk_timeout=chunk_timeout, http_token=http_token)
    setup_logging(log_level)

    def ready(info: AgentInfo) -> None:
        s = info.service
        click.echo(f"agent: serving {s.model} ({s.task}) from slot {info.slot} "
                   f"of {info.state_dir}")
        if info.recovered:
            click.echo(f"recovered: a deployment was {info.recovered} when the agent stopped")
        click.echo(f"http: {s.http_url}")
        click.echo(f"mqtt: {s.broker} device {s.device} fleet {s.fleet} session {s.session}")
        for role, topic in info.deploy_topics.items():
            click.echo(f"  {role:<17} {topic}")
        click.echo("press Ctrl-C to stop", err=False)

    run_agent(settings, on_ready=ready)
    click.echo("stopped")


@agent_command.command("install-service")
@click.option("--config", default="/etc/edgeml/agent.yaml", show_default=True,
              type=click.Path(dir_okay=False),
              help="The agent config the unit runs with (checked with the agent's loader).")
@click.option("--unit-dir", default="/etc/systemd/system", show_default=True,
              type=click.Path(file_okay=False), help="Folder to write edgeml-agent.service in.")
@click.option("--user", default="edgeml", show_default=True,
              help="System user the agent runs as ('' for systemd's DynamicUser=yes).")
@click.option("--state-dir", default="/var/lib/edgeml", show_default=True,
              help="State folder (under /var/lib: the unit's StateDirectory=).")
@click.option("--enable", is_flag=True, default=False,
              help="Then run systemctl daemon-reload and systemctl enable --now (when "
                   "systemctl exists).")
def install_service_command(config: str, unit_dir: str, user: str, state_dir: str,
                            enable: bool) -> None:
    """Write the systemd unit that runs `edgeml agent --config CONFIG` on this device.

    The unit (Restart=always, StateDirectory=, its own user) runs this installation's edgeml.
    With --enable it is enabled and started; without systemctl only the file is written.
    """
    from edgeml.agent.unit import install_service

    result = install_service(config=config, unit_dir=unit_dir, user=user or None,
                             state_dir=state_dir, enable=enable)
    click.echo(result.message)
