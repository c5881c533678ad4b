"""CLI command for re-evaluating a registered model: ``edgeml evaluate``.

Thin shell: parse arguments, call :func:`edgeml.train.evaluate.evaluate_model`, render a
table (rich) or JSON. Host libraries are imported inside the command body.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgeml.cli.base import cli, json_option, print_json, registry_dir, registry_option


@cli.command("evaluate")
@click.argument("model_ref")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Evaluate on this data file (default: the model's stored holdout).")
@registry_option
@json_option
def evaluate_command(model_ref: str, data: Path | None, registry: str | None, as_json: bool) -> None:
    """Re-evaluate a registered model (NAME or NAME@VERSION) on new data or its holdout.

    The data needs the model's feature columns and, except for anomaly models, its target
    column. Metrics are shown next to the ones recorded at training time.

    \b
    Examples:
      edgeml evaluate penguins
      edgeml evaluate penguins@1 --data new-penguins.csv --json
    """
    from rich.console import Console

    from edgeml.train.evaluate import evaluate_model, render_evaluation

    result = evaluate_model(model_ref, registry=registry_dir(registry), data=data)
    if as_json:
        print_json(result)
    else:
        render_evaluation(result, Console())
