"""CLI commands of the fleet layer: ``edgeml fleet status|devices|device|drift|alerts|retrains|acl|db``.

Host side. SQLAlchemy and rich are imported inside the command bodies, so that loading the
CLI (``edgeml --help``, device commands) never loads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from edgeml.cli.base import cli, json_option, print_json

F = TypeVar("F", bound=Callable[..., Any])


def db_option(func: F) -> F:
    return click.option(
        "--db", "db", default=None, metavar="URL", envvar="EDGEML_FLEET_DB",
        help="Fleet store: sqlite:///FILE or postgresql+psycopg://USER@HOST/DB "
             "(default: $EDGEML_FLEET_DB, else sqlite:///fleet.db).",
    )(func)


def since_option(func: F) -> F:
    return click.option("--since", "since", default="1h", show_default=True, metavar="DURATION",
                        help="Rates over the windows of the last DURATION (90s, 10m, 1h).")(func)


def _seconds(value: str) -> float:
    from edgeml.fleet.thresholds import parse_duration

    return parse_duration(value, "--since")


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float) and spec:
        return format(value, spec)
    return str(value)


def _table(title: str, columns: Sequence[tuple[str, str, str]], rows: list[dict[str, Any]]) -> None:
    """Print ``rows`` with rich: columns are (header, key, format spec)."""
    import sys

    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for header, _key, spec in columns:
        table.add_column(header, justify="right" if spec else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(_fmt(row.get(key), spec) for _h, key, spec in columns))
    Console(width=None if sys.stdout.isatty() else 240).print(table)


@contextmanager
def _opened(db: str | None) -> Iterator[Any]:
    """The store of ``--db``, its errors mapped to one line, disposed afterwards."""
    from edgeml.fleet.db import open_store, store_errors

    store = open_store(db)
    try:
        with store_errors(store.url):
            yield store
    finally:
        store.dispose()


@cli.group("fleet")
def fleet_group() -> None:
    """What the fleet reports, from the store that `edgeml monitor` fills."""


@fleet_group.command("status")
@db_option
@since_option
@json_option
def status_command(db: str | None, since: str, as_json: bool) -> None:
    """Fleet totals: devices by state, models, requests, lost windows, quarantine, alerts."""
    from edgeml.fleet.views import fleet_status

    with _opened(db) as store:
        result = fleet_status(store, since_s=_seconds(since))
    if as_json:
        print_json(result)
        return
    rows = [{"what": k, "value": v if not isinstance(v, (dict, list)) else
             ", ".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else ", ".join(v)}
            for k, v in result.items()]
    _table("fleet status", [("", "what", ""), ("value", "value", "")], rows)


DEVICE_COLUMNS = [
    ("fleet", "fleet", ""), ("device", "device", ""), ("state", "state", ""),
    ("model", "model", ""), ("last seen", "last_seen", ""), ("requests", "requests", ""),
    ("req/s", "requests_per_s", ".2f"), ("p95 ms", "p95_ms", ".2f"),
    ("errors", "error_rate", ".1%"), ("lost", "lost_windows", ""),
    ("drift", "drift_feature", ""), ("score", "drift_score", ".3f"),
    ("acc (labels)", "accuracy_labelled", ".3f"), ("acc (est.)", "accuracy_estimated", ".3f"),
]


@fleet_group.command("devices")
@db_option
@since_option
@click.option("--fleet", "fleet", default=None, metavar="ID", help="Only this fleet.")
@json_option
def devices_command(db: str | None, since: str, fleet: str | None, as_json: bool) -> None:
    """Every device: state, model@version, last seen, requests/s, p95, errors, drift, accuracy."""
    from edgeml.fleet.views import devices_table

    with _opened(db) as store:
        rows = devices_table(store, since_s=_seconds(since), fleet=fleet)
    if as_json:
        print_json(rows)
    else:
        _table(f"devices (rates over the last {since})", DEVICE_COLUMNS, rows)


@fleet_group.command("device")
@click.argument("ref", metavar="ID")
@db_option
@since_option
@json_option
def device_command(ref: str, db: str | None, since: str, as_json: bool) -> None:
    """One device (ID or FLEET/ID): its row, sessions, last windows and open alerts."""
    from edgeml.fleet.views import device_detail

    with _opened(db) as store:
        detail = device_detail(store, ref, since_s=_seconds(since))
    if as_json:
        print_json(detail)
        return
    _table(f"{detail['fleet']}/{detail['device']}", DEVICE_COLUMNS[2:], [detail])
    _table("sessions", [("session", "session", ""), ("started", "started_at", ""),
                        ("model", "model", ""), ("first seq", "first_seq", ""),
                        ("last seq", "last_seq", ""), ("received", "received", ""),
                        ("lost", "lost", "")], detail["sessions"])
    _table("last windows", [("session", "session", ""), ("seq", "seq", ""),
                            ("end", "window_end", ""), ("requests", "requests", ""),
                            ("errors", "errors", ""), ("p95 ms", "p95_ms", ".2f")],
           detail["recent_windows"])
    if detail["open_alerts"]:
        _table("open alerts", ALERT_COLUMNS, detail["open_alerts"])


@fleet_group.command("drift")
@db_option
@click.option("--model", "model", default=None, metavar="NAME[@VERSION]", help="Only this model.")
@click.option("--feature", "feature", default=None, metavar="NAME", help="Only this feature.")
@json_option
def drift_command(db: str | None, model: str | None, feature: str | None, as_json: bool) -> None:
    """Drift scores at watch or alert level, per model, fleet and device (last window)."""
    from edgeml.fleet.views import drift_table

    with _opened(db) as store:
        rows = drift_table(store, model=model, feature=feature)
    if as_json:
        print_json(rows)
        return
    _table("drift", [("scope", "scope", ""), ("fleet", "fleet", ""), ("device", "device", ""),
                     ("model", "model", ""), ("feature", "feature", ""),
                     ("statistic", "statistic", ""), ("value", "value", ".3f"),
                     ("threshold", "threshold", ".3f"), ("level", "level", ""),
                     ("rows", "rows", "")], rows)


ALERT_COLUMNS = [
    ("id", "id", ""), ("kind", "kind", ""), ("fleet", "fleet", ""), ("device", "device", ""),
    ("model", "model", ""), ("feature", "feature", ""), ("value", "value", ".3g"),
    ("threshold", "threshold", ".3g"), ("opened", "opened_at", ""),
    ("resolved", "resolved_at", ""),
]


@fleet_group.command("alerts")
@db_option
@click.option("--all", "include_resolved", is_flag=True, help="Resolved alerts too.")
@click.option("--kind", default=None, metavar="KIND", help="Only this kind of alert.")
@json_option
def alerts_command(db: str | None, include_resolved: bool, kind: str | None,
                   as_json: bool) -> None:
    """Open alerts (with --all, resolved ones too), newest first."""
    from edgeml.fleet.views import alerts_table

    with _opened(db) as store:
        rows = alerts_table(store, include_resolved=include_resolved, kind=kind)
    if as_json:
        print_json(rows)
    else:
        _table("alerts", ALERT_COLUMNS, rows)


@fleet_group.command("acl")
@click.option("--fleet", "fleets", multiple=True, metavar="ID",
              help="Devices belong to this fleet (repeat for several; default: any fleet).")
@click.option("--base", "base", default="edgeml", show_default=True, metavar="TOPIC",
              help="Base topic of the devices and monitors.")
@click.option("--monitor-user", "monitors", multiple=True, metavar="NAME",
              help="MQTT username of a monitor/controller: reads everything, commands devices "
                   "(repeat for several).")
@click.option("--out", "out", default=None, metavar="FILE",
              help="Write the ACL to FILE (atomically) instead of printing it.")
def acl_command(fleets: tuple[str, ...], base: str, monitors: tuple[str, ...],
                out: str | None) -> None:
    """A Mosquitto acl_file: each device (username = device id) publishes only under its own
    root and reads only its own commands; monitors read everything and command devices."""
    from edgeml.fleet.acl import AclSpec, render_acl, write_acl

    spec = AclSpec.create(base, fleets, monitors)
    if out is None:
        click.echo(render_acl(spec), nl=False)
    else:
        click.echo(f"wrote {write_acl(spec, out)}")


RETRAIN_COLUMNS = [
    ("id", "id", ""), ("model", "model", ""), ("state", "state", ""), ("trigger", "trigger", ""),
    ("alert", "alert_id", ""), ("host", "host", ""), ("pid", "pid", ""),
    ("started", "started_at", ""), ("finished", "finished_at", ""), ("version", "version", ""),
    ("reason", "reason", ""),
]


@fleet_group.command("retrains")
@db_option
@click.option("--model", "model", default=None, metavar="NAME", help="Only this model's runs.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000),
              help="Show at most this many runs.")
@json_option
def retrains_command(db: str | None, model: str | None, limit: int, as_json: bool) -> None:
    """Retraining runs (manual, or started by the monitor's retrain: trigger), newest first."""
    from edgeml.fleet.retrain_trigger import retrain_runs

    with _opened(db) as store:
        rows = retrain_runs(store, model=model, limit=limit)
    if as_json:
        print_json(rows)
    else:
        _table("retraining runs", RETRAIN_COLUMNS, rows)


@fleet_group.group("db")
def db_group() -> None:
    """The fleet store's schema (Alembic migrations shipped with edgeml)."""


@db_group.command("upgrade")
@db_option
@click.option("--retain-days", type=float, default=None, metavar="N",
              help="Also roll metrics windows older than N days up per hour.")
@json_option
def upgrade_command(db: str | None, retain_days: float | None, as_json: bool) -> None:
    """Create the store, or upgrade it to this edgeml's schema (safe to run in parallel)."""
    from edgeml.fleet.db import db_url, open_store, redact, store_errors
    from edgeml.fleet.migrate import upgrade
    from edgeml.fleet.retention import roll_up

    url = db_url(db)
    with store_errors(url):
        before, after = upgrade(url)
        result: dict[str, Any] = {"db": redact(url), "from": before, "to": after}
        if retain_days is not None:
            store = open_store(url)
            try:
                rolled = roll_up(store, retain_days)
            finally:
                store.dispose()
            result["rolled_up"] = {"windows": rolled.windows, "hours": rolled.hours,
                                   "samples_deleted": rolled.samples,
                                   "feedback_deleted": rolled.feedback}
    if as_json:
        print_json(result)
        return
    what = "already at" if before == after else f"upgraded from {before or 'empty'} to"
    click.echo(f"{result['db']}: {what} schema revision {after}")
    if "rolled_up" in result:
        r = result["rolled_up"]
        click.echo(f"rolled up {r['windows']} windows into {r['hours']} device-hours")
