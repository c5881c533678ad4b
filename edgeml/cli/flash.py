"""CLI commands: `edgeml flash` (the library: edgeml.package.flash)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeml.cli.base import cli


@cli.command("flash")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "to", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to lay the device tree out in: a mounted SD card root or an image "
                   "folder (created if missing).")
@click.option("--config", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Agent config to install as /etc/edgeml/agent.yaml (checked with the "
                   "agent's loader); default: one generated from --broker.")
@click.option("--broker", default=None, metavar="URL",
              help="Broker for the generated config, mqtt://HOST[:PORT] (without --config).")
@click.option("--wheels", is_flag=True, default=False,
              help="Also copy the bundle's offline wheels and an install.sh that needs no "
                   "network (the bundle must be packaged with --offline).")
@click.option("--state-dir", default="/var/lib/edgeml", show_default=True,
              help="The agent's state folder on the device (under /var/lib: the unit's "
                   "StateDirectory=).")
@click.option("--user", default="edgeml", show_default=True,
              help="System user the agent runs as ('' for systemd's DynamicUser=yes).")
@click.option("--prefix", default="/opt/edgeml", show_default=True,
              help="Where install.sh and the venv live on the device.")
@click.option("--force", is_flag=True, default=False,
              help="Write into a non-empty folder (edgeml's files are replaced, others kept).")
@click.option("--json", "as_json", is_flag=True, default=False,
              help="Print what was written as JSON.")
def flash_command(bundle: Path, to: Path, config: Path | None, broker: str | None, wheels: bool,
                  state_dir: str, user: str, prefix: str, force: bool, as_json: bool) -> None:
    """Lay out BUNDLE as an installable edgeml agent under --to.

    Writes the agent config, the bundle as the committed slot of the state folder, a systemd
    unit, and with --wheels the offline wheels and install.sh. On the device run
    `sudo sh /opt/edgeml/install.sh` once (no network needed).
    """
    from edgeml.package.flash import flash

    result = flash(bundle, to, config=config, broker=broker, wheels=wheels, state_dir=state_dir,
                   user=user or None, prefix=prefix, force=force)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        return
    click.echo(f"flashed {result.bundle} into {result.root}")
    click.echo(f"  config  {result.config}" + (" (generated)" if result.generated_config else ""))
    click.echo(f"  state   {result.state_dir} (slot a, committed)")
    click.echo(f"  unit    {result.unit}")
    if result.install_script is not None:
        click.echo(f"  wheels  {len(result.wheels)} in {result.install_script.parent / 'wheels'}")
        click.echo(f"  install {result.install_script}  (on the device: sudo sh "
                   f"{prefix}/install.sh)")
