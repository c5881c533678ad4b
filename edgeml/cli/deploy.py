"""CLI commands: ``edgeml deploy BUNDLE ...``, ``edgeml deploy status|halt|resume``, ``edgeml rollback``.

They only write and read the fleet database (:mod:`edgeml.fleet.deploys`); the monitors
(``edgeml monitor``) send the commands and advance the stages, so a rollout survives the
command that started it. Host side: SQLAlchemy and rich are imported in the bodies.
"""

from __future__ import annotations

from typing import Any

import click

from edgeml.cli.base import cli, json_option, print_json
from edgeml.cli.fleet import _opened, _table, db_option


class _BundleContext(click.Context):
    @property
    def command_path(self) -> str:  # `edgeml deploy`, not `edgeml deploy deploy`
        return self.parent.command_path if self.parent is not None else "edgeml deploy"


class _BundleCommand(click.Command):
    context_class = _BundleContext

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "BUNDLE --fleet ID [OPTIONS]")


class _DeployGroup(click.Group):
    """``edgeml deploy BUNDLE ...``: a first argument that names no subcommand is the bundle."""

    bundle_command: click.Command

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return self.bundle_command.name, self.bundle_command, args
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "BUNDLE --fleet ID [OPTIONS] | COMMAND [ARGS]...")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [r for p in self.bundle_command.get_params(ctx)
                if (r := p.get_help_record(ctx)) is not None]
        with formatter.section("Options of `edgeml deploy BUNDLE`"):
            formatter.write_dl(rows)
        self.format_commands(ctx, formatter)


@cli.group("deploy", cls=_DeployGroup)
def deploy_group() -> None:
    """Roll a bundle out to a fleet in stages: `edgeml deploy BUNDLE --fleet ID` records the
    deployment in the fleet database and prints its id; the monitors send it to the devices,
    judge each stage's health gates and halt (rolling the stage back) when one fails."""


def _gates(max_error_rate: float | None, max_p95_ratio: float | None, max_psi: float | None,
           min_requests: int) -> dict[str, Any]:
    return {"max_error_rate": max_error_rate, "max_p95_ratio": max_p95_ratio,
            "max_psi": max_psi, "min_requests": min_requests}


@click.command("deploy", cls=_BundleCommand)
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--fleet", required=True, metavar="ID", help="The fleet to deploy to.")
@click.option("--devices", default=None, metavar="ID,...",
              help="Only these devices (default: every device of the fleet in the database).")
@click.option("--stages", default="100%", show_default=True, metavar="P%,...",
              help="Cumulative shares of the devices per stage, e.g. 10%,50%,100%.")
@click.option("--soak", "soak_s", default=30.0, show_default=True, type=float, metavar="SECONDS",
              help="Trial period on each device before it commits.")
@click.option("--max-error-rate", default=0.05, show_default=True, type=float, metavar="X",
              help="Health gate: error rate of the new version (device trial and fleet).")
@click.option("--max-p95-ratio", default=3.0, show_default=True, type=float, metavar="X",
              help="Health gate: p95 latency of the new version / the previous version's.")
@click.option("--max-psi", default=None, type=float, metavar="X",
              help="Health gate (fleet side): largest PSI of an input or the prediction "
                   "against the bundle's reference profile (default: not judged).")
@click.option("--min-requests", default=20, show_default=True, type=int, metavar="N",
              help="Fewer requests than this: the error-rate and latency gates are not judged.")
@click.option("--allow-downgrade", is_flag=True, help="Allow a lower version than the device's.")
@db_option
@json_option
def deploy_bundle(bundle: str, fleet: str, devices: str | None, stages: str, soak_s: float,
                  max_error_rate: float, max_p95_ratio: float, max_psi: float | None,
                  min_requests: int, allow_downgrade: bool, db: str | None,
                  as_json: bool) -> None:
    """Record a staged deployment of BUNDLE to a fleet and print its id (the monitors run it)."""
    from edgeml.fleet.deploys import create_deployment, deployment_status, parse_stages

    with _opened(db) as store:
        ident = create_deployment(
            store, bundle, fleet, devices=devices.split(",") if devices is not None else None,
            stages=parse_stages(stages), soak_s=soak_s,
            gates=_gates(max_error_rate, max_p95_ratio, max_psi, min_requests),
            allow_downgrade=allow_downgrade)
        status = deployment_status(store, ident)
    if as_json:
        print_json(status)
        return
    per_stage: dict[int, int] = {}
    for row in status["devices"]:
        per_stage[row["stage"]] = per_stage.get(row["stage"], 0) + 1
    click.echo(ident)
    click.echo(f"{status['model']}@{status['version']} to {len(status['devices'])} devices of "
               f"{fleet}, stages: " + ", ".join(f"{n}" for _k, n in sorted(per_stage.items())),
               err=True)


assert isinstance(deploy_group, _DeployGroup)
deploy_group.bundle_command = deploy_bundle

DEVICE_COLUMNS = [("stage", "stage_no", ""), ("device", "device", ""), ("state", "state", ""),
                  ("chunks", "progress", ""), ("from", "from_version", ""),
                  ("serving", "serving_version", ""), ("sends", "sends", ""),
                  ("updated", "updated_at", ""), ("reason", "reason", "")]
LIST_COLUMNS = [("id", "id", ""), ("fleet", "fleet", ""), ("model", "model_at", ""),
                ("state", "state", ""), ("stage", "stage_of", ""), ("devices", "counts", ""),
                ("created", "created_at", ""), ("reason", "reason", "")]


@deploy_group.command("status")
@click.argument("ident", metavar="[ID]", required=False)
@click.option("--limit", default=20, show_default=True, type=int,
              help="Without ID: how many of the newest deployments to list.")
@db_option
@json_option
def status_command(ident: str | None, limit: int, db: str | None, as_json: bool) -> None:
    """Progress of deployment ID per device (stage, state, chunks, versions, reason); without
    ID the newest deployments with their devices per state."""
    from edgeml.fleet.deploys import deployment_status, list_deployments

    with _opened(db) as store:
        result: Any = deployment_status(store, ident) if ident else list_deployments(store, limit)
    if as_json:
        print_json(result)
        return
    if ident is None:
        for d in result:
            d["model_at"] = f"{d['model']}@{d['version']}"
            d["stage_of"] = f"{d['stage'] + 1}/{len(d['stages'])}"
            d["counts"] = ", ".join(f"{k} {v}" for k, v in sorted(d["devices"].items()))
        _table("deployments", LIST_COLUMNS, result)
        return
    for row in result["devices"]:
        row["stage_no"] = row["stage"] + 1
        row["progress"] = f"{row['have']}/{row['count']}" if row["count"] else ""
    stages = ", ".join(f"{f:.0%}" for f in result["stages"])
    title = (f"{result['id']}: {result['model']}@{result['version']} to {result['fleet']}, "
             f"{result['state']}, stage {result['stage'] + 1} of {len(result['stages'])} "
             f"({stages})" + (f": {result['reason']}" if result["reason"] else ""))
    _table(title, DEVICE_COLUMNS, result["devices"])


@deploy_group.command("halt")
@click.argument("ident", metavar="ID")
@db_option
def halt_command(ident: str, db: str | None) -> None:
    """Halt running deployment ID: no further command or stage (devices on trial finish it)."""
    from edgeml.fleet.deploys import halt_deployment

    with _opened(db) as store:
        halt_deployment(store, ident)
    click.echo(f"{ident}: halted")


@deploy_group.command("resume")
@click.argument("ident", metavar="ID")
@db_option
def resume_command(ident: str, db: str | None) -> None:
    """Resume halted deployment ID; devices of its stage that failed or rolled back are skipped."""
    from edgeml.fleet.deploys import resume_deployment

    with _opened(db) as store:
        resume_deployment(store, ident)
    click.echo(f"{ident}: running")


@cli.command("rollback")
@click.option("--device", "device", required=True, metavar="ID", help="The device to roll back.")
@click.option("--fleet", default=None, metavar="ID",
              help="Its fleet (needed when the id is in several fleets).")
@db_option
@json_option
def rollback_command(device: str, fleet: str | None, db: str | None, as_json: bool) -> None:
    """Roll a device back from its last committed deployment to the version before: marked in
    the fleet database; a monitor sends the command and repeats it until the device reports."""
    from edgeml.fleet.deploys import rollback_device

    with _opened(db) as store:
        row = rollback_device(store, device, fleet)
    if as_json:
        print_json(row)
    else:
        click.echo(f"{row['fleet']}/{device}: rollback of {row['deployment']} asked "
                   f"(a monitor sends it)")
