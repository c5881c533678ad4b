"""CLI command ``edgeml dashboard`` (host side): parses options and calls
:func:`edgeml.fleet.dashboard.serve`. Starlette and uvicorn load only when it runs."""

from __future__ import annotations

import click

from edgeml.cli.base import cli


@cli.command("dashboard")
@click.option("--db", "db", default=None, metavar="URL", envvar="EDGEML_FLEET_DB",
              help="Fleet store written by `edgeml monitor` (default: $EDGEML_FLEET_DB, else "
                   "sqlite:///fleet.db); opened read-only.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs --token or --token-file.")
@click.option("--port", default=8090, show_default=True, type=int, help="Port (0: any free one).")
@click.option("--token", default=None, envvar="EDGEML_DASHBOARD_TOKEN",
              help="Require this token on every request (or $EDGEML_DASHBOARD_TOKEN; "
                   "at least 16 characters).")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False),
              help="Read the token from this file's first line instead.")
def dashboard_command(db: str | None, host: str, port: int, token: str | None,
                      token_file: str | None) -> None:
    """Serve the fleet dashboard: devices, drift, alerts and models, live, in a browser.

    Read-only. Loopback only unless a token is given; every request then carries it
    (`Authorization: Bearer TOKEN`, or open the page once with ?token=TOKEN).
    """
    from edgeml.fleet.dashboard.server import DashboardSettings, serve

    serve(DashboardSettings(db=db, host=host, port=port, token=token, token_file=token_file))
