"""CLI commands: ``edgeml retrain`` (thin shell over :func:`edgeml.train.retrain.retrain`)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeml.cli.base import cli, json_option, print_json, registry_dir, registry_option


@cli.command("retrain")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--db", "db", default=None, metavar="URL",
              help="Fleet store with the labelled field rows (default: $EDGEML_FLEET_DB, "
                   "else sqlite:///fleet.db).")
@click.option("--since", default=None, metavar="TIME",
              help="Only labels given at or after TIME: ISO 8601 or an age (7d, 12h, 30m).")
@click.option("--min-labels", type=int, default=50, show_default=True,
              help="Fewest valid labelled field rows to retrain on (else exit 2).")
@click.option("--field-weight", type=float, default=1.0, show_default=True,
              help="Weight of a field row relative to a recipe row (sample_weight, or "
                   "repeated rows for estimators without it).")
@click.option("--field-only", is_flag=True,
              help="Train on the field rows alone (the recipe's holdout is still compared).")
@click.option("--margin", type=float, default=0.01, show_default=True,
              help="How much worse than the champion the challenger may be on the recipe "
                   "holdout (metric units).")
@click.option("--run-id", type=int, default=None,
              help="Finish this retrain_runs row (made by the monitor's trigger) instead of "
                   "inserting a manual one.")
@click.option("--deploy", is_flag=True,
              help="If it becomes the challenger: package it for the champion's target and "
                   "start a staged rollout to --fleet (the champion alias moves when it completes).")
@click.option("--fleet", default=None, metavar="ID", help="With --deploy: the fleet to roll out to.")
@click.option("--stages", default="10%,100%", show_default=True, metavar="P%,...",
              help="With --deploy: cumulative shares of the devices per stage.")
@click.option("--soak", "soak_s", default=30.0, show_default=True, type=float, metavar="SECONDS",
              help="With --deploy: trial period on each device before it commits.")
@click.option("--target", default=None,
              help="With --deploy: device profile to package for (default: the champion's "
                   "bundles' target in the fleet store).")
@click.option("--out", "out_dir", default="dist", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="With --deploy: folder for the challenger's bundle.")
@click.option("--sign-key", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --deploy: ed25519 private key the challenger's bundle is signed with "
                   "(devices with a public key refuse unsigned bundles).")
@registry_option
@json_option
def retrain_command(recipe: Path, db: str | None, since: str | None, min_labels: int,
                    field_weight: float, field_only: bool, margin: float, run_id: int | None,
                    deploy: bool, fleet: str | None, stages: str, soak_s: float,
                    target: str | None, out_dir: Path, sign_key: Path | None,
                    registry: str | None, as_json: bool) -> None:
    """Retrain a recipe's model with the fleet's labelled field rows and compare it.

    Validates the field rows against the champion's features, holds out the newest of
    them, runs the recipe's own search on its data plus the older field rows, scores
    challenger and champion on both holdouts (paired bootstrap CI, McNemar) and
    registers the new version with its lineage. It becomes the challenger only when it
    is better on the field holdout and not worse on the recipe holdout beyond --margin;
    otherwise it is registered without an alias and the run is rejected (exit 1).
    """
    from edgeml.errors import UsageError
    from edgeml.train.promote import deploy_retrained
    from edgeml.train.retrain import retrain

    if deploy and not fleet:
        raise UsageError("--deploy needs --fleet ID")
    result = retrain(recipe, db=db, registry=registry_dir(registry), since=since,
                     min_labels=min_labels, field_weight=field_weight, field_only=field_only,
                     margin=margin, run_id=run_id)
    rollout = None
    if deploy and result.state == "registered":
        rollout = deploy_retrained(result, db=db, registry=registry_dir(registry),
                                   fleet=str(fleet), stages=stages, soak_s=soak_s,
                                   target=target, out_dir=out_dir, sign_key=sign_key)
    if as_json:
        print_json({**result.to_dict(), "rollout": rollout})
    else:
        field = result.lineage["field"]
        excluded = ", ".join(f"{k} {v}" for k, v in field["excluded"].items()) or "none"
        click.echo(f"parent:     {result.parent}")
        click.echo(f"field rows: {field['train_rows']} trained on, {field['holdout_rows']} held "
                   f"out, from {len(field['devices'])} device(s), {field['first_ts']} .. "
                   f"{field['last_ts']}; excluded: {excluded}")
        for h in (result.comparison or {}).get("holdouts", []):
            p = "" if h["mcnemar_p"] is None else f"  McNemar p {h['mcnemar_p']:.3g}"
            click.echo(f"{h['holdout']:>6} holdout ({h['rows']} rows): {h['metric']} champion "
                       f"{h['champion']:.4f} challenger {h['challenger']:.4f} improvement "
                       f"{h['delta']:+.4f} (95% CI {h['ci_low']:+.4f} .. {h['ci_high']:+.4f}){p}")
        click.echo(f"{result.ref}: {result.state}: {result.reason}")
        if result.entry is not None:
            click.echo(f"report: {result.entry.file('report')}")
        if rollout is not None:
            click.echo(f"deployment {rollout['deployment']}: {result.ref} ({rollout['target']}) "
                       f"to {len(rollout['devices'])} device(s) of {fleet}, stages {stages}")
    if result.state != "registered":
        raise SystemExit(1)
