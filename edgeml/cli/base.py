"""The root click group, shared options, and the one place where errors become exit codes.

Command modules only parse arguments and call library functions; host-only
libraries are imported inside the command bodies so that device commands
(``verify``, ``serve``, ``broker``) never load scikit-learn.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from edgeml import __version__
from edgeml.errors import EdgeMLError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_REGISTRY = "registry"


def registry_dir(value: str | None) -> Path:
    """``--registry DIR``, else ``$EDGEML_REGISTRY``, else ``./registry``."""
    return Path(value or os.environ.get("EDGEML_REGISTRY") or DEFAULT_REGISTRY)


def registry_option(func: F) -> F:
    return click.option(
        "--registry",
        "registry",
        type=click.Path(file_okay=False),
        default=None,
        help="Model registry folder (default: $EDGEML_REGISTRY, else ./registry).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        func
    )


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def text_table(rows: Sequence[Sequence[str]], *, indent: str = "",
               right: Collection[int] = ()) -> str:
    """Plain aligned text (device-safe, no rich): columns two spaces apart, left-aligned
    except the column numbers in ``right``; trailing spaces stripped."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        indent + "  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                           for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    )


# auto_envvar_prefix: every option of every command may come from $EDGEML_<COMMAND>_<OPTION>
@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "EDGEML"})
@click.version_option(__version__, prog_name="edgeml", allow_from_autoenv=False)  # not $EDGEML_VERSION
def cli() -> None:
    """edgeml: train on a workstation, ship ONNX bundles to edge devices, serve and monitor them."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn edgeml errors into one line and an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="edgeml", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgeMLError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
