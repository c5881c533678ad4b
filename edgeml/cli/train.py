"""CLI commands of the train layer: ``edgeml train`` and ``edgeml models list|show|compare|alias``.

Thin shell: parse arguments, call :func:`edgeml.train.workflow.train` or the
:class:`~edgeml.train.registry.Registry`, render tables (rich) or JSON. Host libraries are
imported inside the command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeml.cli.base import cli, json_option, print_json, registry_dir, registry_option


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "(defaults)"


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}


def _leaderboard_table(rows: list[dict[str, Any]], scoring: str | None) -> Any:
    from rich.table import Table

    table = Table(title=f"Leaderboard ({scoring or 'not scored'}, cross-validated)")
    for col in ("rank", "family", "params", "CV score ± spread", "fit time"):
        table.add_column(col, justify="right" if col in ("rank", "fit time") else "left",
                         no_wrap=col in ("family", "CV score ± spread"))
    for r in rows:
        score = "-" if r["cv_mean"] is None else f"{r['cv_mean']:.4f} ± {r['cv_std']:.4f}"
        fit = "-" if r["fit_time_s"] is None else f"{r['fit_time_s']:.3f} s"
        table.add_row(str(r["rank"]), r["family"], _params(r["params"]), score, fit)
    return table


def _metrics_table(title: str, metrics: dict[str, Any], primary: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in _scalar_metrics(metrics).items():
        table.add_row(f"{k} (primary)" if k == primary else k, _fmt(v))
    return table


def _gates_table(gates: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="Gates")
    for col in ("gate", "value", "result"):
        table.add_column(col)
    for g in gates:
        table.add_row(f"{g['metric']} {g['op']} {g['threshold']:g}", _fmt(g["value"]),
                      "PASS" if g["passed"] else "FAIL")
    return table


@cli.command("train")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Train on this data file instead of the recipe's data.source.")
@registry_option
@json_option
def train_command(recipe: Path, data: Path | None, registry: str | None, as_json: bool) -> None:
    """Train the model a recipe describes, check its gates and register it.

    Searches every candidate with cross-validation, refits the best on the training
    split, evaluates it once on the holdout, and registers it as the next version of
    the recipe's name (nothing is registered if a gate fails; exit code 1).
    """
    from rich.console import Console

    from edgeml.train.workflow import train

    result = train(recipe, data=data, registry=registry_dir(registry))
    meta = result.entry.meta
    if as_json:
        print_json({"ref": result.ref, "path": str(result.entry.path),
                    "report": str(result.report), "leaderboard": result.leaderboard,
                    "metrics": result.metrics, "gates": result.gates,
                    "warnings": result.warnings})
        return
    out = Console(highlight=False)
    out.print(_leaderboard_table(result.leaderboard, meta["model"]["scoring"]))
    out.print(_metrics_table(f"Holdout metrics ({meta['data']['holdout_rows']} rows)",
                             result.metrics, meta["metrics"]["primary"]))
    if result.gates:
        out.print(_gates_table(result.gates))
    for where, msgs in result.warnings.items():
        for msg in msgs:
            click.echo(f"warning ({where}): {msg}")
    click.echo(f"registered: {result.ref}")
    click.echo(f"report: {result.report}")


@cli.group("models")
def models() -> None:
    """Inspect the model registry: list, show and compare registered models."""


@models.command("list")
@click.argument("name", required=False)
@registry_option
@json_option
def models_list(name: str | None, registry: str | None, as_json: bool) -> None:
    """List registered models (every version, or only those of NAME)."""
    from rich.console import Console
    from rich.table import Table

    from edgeml.train.registry import Registry, parse_ref, summarize_entry

    reg = Registry(registry_dir(registry))
    if name is not None:
        parse_ref(name)
    rows = [summarize_entry(e) for e in reg.list(name)]
    if as_json:
        print_json(rows)
        return
    out = Console(highlight=False)
    if not rows:
        click.echo(f"no models in {reg.root}")
        return
    table = Table(title=f"Models in {reg.root}")
    for col in ("ref", "family", "created (UTC)", "holdout", "data"):
        table.add_column(col, no_wrap=col in ("ref", "holdout", "created (UTC)"))
    aliases = {n: reg.aliases(n) for n in {r["name"] for r in rows}}
    for r in rows:
        hold, key = r["holdout"], r["primary"]
        created = (r["created_at"] or "-").replace("T", " ")[:16]
        tags = [a for a, v in aliases[r["name"]].items() if v == r["version"]]
        table.add_row(r["ref"] + (f" ({', '.join(tags)})" if tags else ""), r["family"] or "-",
                      created,
                      f"{key} {_fmt(hold[key], 3)}" if key in hold else "-",
                      (r["data_sha256"] or "-")[:8])
    out.print(table)


@models.command("show")
@click.argument("ref")
@registry_option
@json_option
def models_show(ref: str, registry: str | None, as_json: bool) -> None:
    """Show one model (REF is NAME for the latest version, or NAME@VERSION)."""
    from rich.console import Console
    from rich.table import Table

    from edgeml.train.registry import Registry

    entry = Registry(registry_dir(registry)).resolve(ref)
    m = entry.meta
    if as_json:
        print_json(m)
        return
    out = Console(highlight=False)
    model, data = m.get("model", {}), m.get("data", {})
    click.echo(f"{entry.ref}  ({m.get('task')}, created {m.get('created_at')})")
    click.echo(f"path:   {entry.path}")
    aliases = Registry(registry_dir(registry)).aliases_of(entry)
    if aliases:
        click.echo(f"alias:  {', '.join(aliases)}")
    lineage = m.get("lineage")
    if lineage:
        fr = lineage["field"]
        click.echo(f"parent: {lineage.get('parent')}  (retrain run {lineage.get('run_id')}; "
                   f"{fr['train_rows']} + {fr['holdout_rows']} field rows from "
                   f"{len(fr['devices'])} device(s), {fr['first_ts']} .. {fr['last_ts']})")
    if m.get("comparison"):
        click.echo(f"vs {m['comparison']['champion']}: {m['comparison']['decision']}: "
                   f"{m['comparison']['reason']}")
    click.echo(f"model:  {model.get('family')}  {_params(model.get('params', {}))}")
    click.echo(f"cv:     {model.get('scoring')} {_fmt(model.get('cv_mean'))} ± "
               f"{_fmt(model.get('cv_std'))}")
    click.echo(f"data:   {data.get('source')}  sha256 {str(data.get('sha256'))[:12]}  "
               f"{data.get('train_rows')} train / {data.get('holdout_rows')} holdout rows")
    classes = (m.get("target") or {}).get("classes")
    click.echo(f"target: {(m.get('target') or {}).get('name')}"
               + (f"  classes {', '.join(classes)}" if classes else ""))
    out.print(_metrics_table("Holdout metrics", entry.record.holdout_scalars(),
                             entry.record.metrics.primary))
    if m.get("gates"):
        out.print(_gates_table(m["gates"]))
    feats = Table(title="Features")
    for col in ("name", "kind", "range / categories"):
        feats.add_column(col)
    for f in m.get("features", []):
        detail = (f"{_fmt(f.get('min'), 3)} .. {_fmt(f.get('max'), 3)}" if f["kind"] == "numeric"
                  else ", ".join(f.get("categories") or []) or "-")
        feats.add_row(f["name"], f["kind"], detail)
    out.print(feats)
    click.echo(f"report: {entry.file('report')}")


@models.command("compare")
@click.argument("ref_a")
@click.argument("ref_b")
@registry_option
@json_option
def models_compare(ref_a: str, ref_b: str, registry: str | None, as_json: bool) -> None:
    """Compare two models side by side: metrics, params, data hash, and what differs."""
    from rich.console import Console
    from rich.table import Table

    from edgeml.train.compare import compare_holdouts
    from edgeml.train.registry import Registry, compare_entries

    reg = Registry(registry_dir(registry))
    entry_a, entry_b = reg.resolve(ref_a), reg.resolve(ref_b)
    cmp = compare_entries(entry_a, entry_b)
    paired = compare_holdouts(entry_a, entry_b)
    cmp["holdouts"] = paired
    if as_json:
        print_json(cmp)
        return
    out = Console(highlight=False)
    for section in ("general", "params", "metrics"):
        table = Table(title=section)
        for col in ("", cmp["a"], cmp["b"], "delta" if section == "metrics" else "same"):
            table.add_column(col)
        for key, d in cmp[section].items():
            last = _fmt(d.get("delta")) if section == "metrics" else ("yes" if d["same"] else "NO")
            a, b = d["a"], d["b"]
            if key == "features":
                a, b = len(a), len(b)
            show = _fmt if section == "metrics" else str
            table.add_row(key, show(a), show(b), last)
        out.print(table)
    if paired["holdouts"]:
        table = Table(title=f"Paired on {cmp['b']}'s holdouts ({paired['metric']}; "
                            "improvement = b better)")
        for col in ("holdout", "rows", cmp["a"], cmp["b"], "improvement", "95% CI",
                    "McNemar p"):
            table.add_column(col)
        for h in paired["holdouts"]:
            table.add_row(h["holdout"], str(h["rows"]), _fmt(h["champion"]),
                          _fmt(h["challenger"]), _fmt(h["delta"]),
                          f"{_fmt(h['ci_low'])} .. {_fmt(h['ci_high'])}", _fmt(h["mcnemar_p"]))
        out.print(table)
    elif paired["note"]:
        click.echo(f"holdouts: not compared ({paired['note']})")
    diffs = cmp["differences"]
    click.echo("differences: " + (", ".join(diffs) if diffs else "none"))


@models.command("alias")
@click.argument("ref")
@click.argument("alias")
@click.option("--delete", is_flag=True, help="Remove ALIAS instead of setting it (REF: NAME).")
@registry_option
@json_option
def models_alias(ref: str, alias: str, delete: bool, registry: str | None, as_json: bool) -> None:
    """Point ALIAS (champion, challenger...) of a model at REF (NAME@VERSION).

    Afterwards NAME@ALIAS works wherever a model reference does. Aliases are stored in
    <registry>/<name>/aliases.json, replaced atomically.
    """
    from edgeml.errors import UsageError
    from edgeml.train.registry import Registry, parse_ref

    reg = Registry(registry_dir(registry))
    if delete:
        name = parse_ref(ref.split("@")[0])[0]
        aliases = reg.set_alias(name, alias, None)
    else:
        entry = reg.resolve(ref)
        if "@" not in ref:
            raise UsageError(f"{ref}: give the version to alias, e.g. {ref}@{entry.version}")
        name = entry.name
        aliases = reg.set_alias(name, alias, entry.version)
    if as_json:
        print_json({"name": name, "aliases": aliases})
        return
    shown = ", ".join(f"{a} -> {name}@{v}" for a, v in aliases.items()) or "none"
    click.echo(f"aliases of {name}: {shown}")
