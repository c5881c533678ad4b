"""CLI commands of the runtime layer: ``edgeml predict`` (device-safe: no host libraries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeml.cli.base import cli, json_option, print_json, text_table


def _table(result: dict[str, Any]) -> str:
    """Plain aligned text: row, label/prediction, and per-class probabilities or score."""
    task = result["model"]["task"]
    preds = result["predictions"]
    classes = result.get("classes") or []
    if task == "classification":
        header = ["row", "label", *classes]
        body = [[str(i), str(p["label"]), *(f"{p.get('probabilities', {}).get(c, 0.0):.4f}"
                                           for c in classes)] for i, p in enumerate(preds)]
    elif task == "regression":
        header = ["row", "prediction"]
        body = [[str(i), f"{p['prediction']:.6g}"] for i, p in enumerate(preds)]
    else:
        header = ["row", "label", "score"]
        body = [[str(i), p["label"], f"{p.get('score', float('nan')):.4f}"]
                for i, p in enumerate(preds)]
    right = {c for c in range(len(header)) if c != 1}
    m = result["model"]
    return f"{m['name']}@{m['version']} ({m['target']})\n" + text_table([header, *body], right=right)


@cli.command("predict")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "-i", "source", required=True, metavar="FILE",
              help="Rows as JSON Lines, a JSON list or {\"instances\": [...]}; '-' reads stdin.")
@click.option("--public-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also check the bundle's signature with this PEM public key.")
@json_option
def predict_command(bundle: Path, source: str, public_key: Path | None, as_json: bool) -> None:
    """Predict the rows of FILE with BUNDLE (verified first) and print them.

    Prints a table, or with --json {"model": {...}, "predictions": [...]} where each
    prediction is what POST /v1/predict returns for the row.
    """
    from edgeml.runtime.batch import predict_file

    result = predict_file(bundle, source, public_key=public_key)
    if as_json:
        print_json({"model": result["model"], "predictions": result["predictions"]})
    else:
        click.echo(_table(result))
