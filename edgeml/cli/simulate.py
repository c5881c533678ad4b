"""CLI command ``edgeml simulate`` (host side): parses options and runs the simulated fleet."""

from __future__ import annotations

from pathlib import Path

import click

from edgeml.cli.base import cli, print_json


@cli.command("simulate")
@click.option("--broker", required=True, metavar="URL", help="MQTT broker, mqtt://host:port.")
@click.option("--bundle", "bundle", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .edgeml bundle every virtual device runs.")
@click.option("--devices", required=True, type=click.IntRange(1, 1_000_000), help="Virtual devices.")
@click.option("--fleet", default="default", show_default=True, help="Fleet id of the devices.")
@click.option("--base-topic", default="edgeml", show_default=True, help="First topic level(s).")
@click.option("--interval", default=10.0, show_default=True, type=float, metavar="S",
              help="Seconds between a device's metrics windows (simulated).")
@click.option("--rate", default=5.0, show_default=True, type=float, metavar="RPS",
              help="Rows each device predicts per (simulated) second.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 10_000),
              help="Rows per recorded request.")
@click.option("--duration", default=60.0, show_default=True, type=float, metavar="S",
              help="Simulated seconds to run.")
@click.option("--speed", default=1.0, show_default=True, type=float,
              help="Simulated seconds per real second; 0: as fast as the predictions run.")
@click.option("--start", default=None, metavar="ISO",
              help="Simulated time of the start, ISO 8601 (UTC without an offset); default: "
                   "now minus --duration with --speed 0 (the windows end by now), else now.")
@click.option("--drift", "drift", multiple=True, metavar="SPEC",
              help="feature=NAME,shift=+8|scale=1.5|swap=a:b[,from=S][,fraction=F] (repeatable).")
@click.option("--decay", "decay", multiple=True, metavar="SPEC",
              help="accuracy=A[,from=S][,fraction=F]: feedback labels agree this often (repeatable).")
@click.option("--feedback-rate", default=0.05, show_default=True, type=click.FloatRange(0, 1),
              help="Share of rows sampled and labelled (samples + feedback messages).")
@click.option("--inputs", default="reference", show_default=True, metavar="reference|selftest|CSV",
              help="Draw rows from the reference profile (features independently), the bundle's "
                   "self-test rows, or a CSV file such as the recipe's data.")
@click.option("--restart-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Chance per window that a device restarts with a new session.")
@click.option("--disconnect-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Chance per window that a device goes offline for 1-3 windows (delivered late).")
@click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of requests recorded as input errors.")
@click.option("--connections", default=2, show_default=True, type=click.IntRange(1, 1000),
              help="MQTT connections shared by the devices.")
@click.option("--prefix", default="sim-", show_default=True, help="Device ids are PREFIX00000...")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def simulate_command(broker: str, bundle: Path, devices: int, fleet: str, base_topic: str,
                     interval: float, rate: float, batch: int, duration: float, speed: float,
                     start: str | None,
                     drift: tuple[str, ...], decay: tuple[str, ...], feedback_rate: float,
                     inputs: str, restart_rate: float, disconnect_rate: float, error_rate: float,
                     connections: int, prefix: str, seed: int, as_json: bool) -> None:
    """Run N virtual devices that serve BUNDLE for real and report like `edgeml serve`."""
    from dataclasses import asdict

    from edgeml.fleet.simulate import DecaySpec, DriftSpec, resolve_start, simulate

    report = simulate(
        bundle, broker=broker, devices=devices, fleet=fleet, base_topic=base_topic,
        interval=interval, rate=rate, batch=batch, duration=duration, speed=speed,
        start=resolve_start(start, speed, duration),
        drift=[DriftSpec.parse(s) for s in drift], decay=[DecaySpec.parse(s) for s in decay],
        feedback_rate=feedback_rate, inputs=inputs, restart_rate=restart_rate,
        disconnect_rate=disconnect_rate, error_rate=error_rate, connections=connections,
        prefix=prefix, seed=seed)
    if as_json:
        out = asdict(report)
        out.pop("window_ends", None)
        print_json(out)
        return
    click.echo(f"{report.devices} devices, {report.windows} windows, {report.rows} rows, "
               f"{report.feedback} labels, {report.restarts} restarts, {report.disconnects} "
               f"disconnects in {report.seconds:.1f} s")
    if report.drifted:
        click.echo(f"drifted: {', '.join(report.drifted)}")
    if report.decayed:
        click.echo(f"decayed: {', '.join(report.decayed)}")
