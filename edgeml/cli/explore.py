"""CLI command for looking at data before writing a recipe: ``edgeml explore``.

Thin shell: parse arguments, call :func:`edgeml.train.explore.explore`, render tables
(rich) or JSON. Host libraries are imported inside the command body.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgeml.cli.base import cli, json_option, print_json


@cli.command("explore")
@click.argument("data")
@click.option("--target", default=None, help="Target column: adds class balance, associations and leakage hints.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a self-contained HTML report to this file.")
@click.option("--table", default=None, help="Table of a SQLite file (not needed if it has only one).")
@json_option
def explore_command(data: str, target: str | None, report: Path | None, table: str | None,
                    as_json: bool) -> None:
    """Profile DATA (a .csv/.parquet/.jsonl/.db file or sklearn:NAME) before writing a recipe.

    Shows kinds, missing values, statistics, distributions, class balance, correlations
    and hints of target leakage, id-like and constant columns.

    \b
    Examples:
      edgeml explore models/data/penguins.csv --target species
      edgeml explore models/data/machine_health.csv --target fault --report health.html
      edgeml explore sklearn:iris --json
    """
    from rich.console import Console

    from edgeml.train.explore import explore
    from edgeml.train.explore_report import render_explore

    result = explore(data, target=target, report=report, table=table)
    if as_json:
        print_json(result.to_dict())
    else:
        render_explore(result, Console())
