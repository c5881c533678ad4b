"""Rendering an :class:`~edgeml.train.explore.ExploreResult`: rich terminal tables and an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeml.train import htmlkit as hk

if TYPE_CHECKING:
    from rich.console import Console

    from edgeml.train.explore import ExploreResult

__all__ = ["render_explore", "sparkline", "write_explore_report"]

_BLOCKS = "▁▂▃▄▅▆▇█"
MAX_PLOTS = 24
MAX_HEATMAP = 30


def sparkline(counts: list[int]) -> str:
    """A histogram as one line of block characters."""
    top = max(counts) if counts else 0
    if top == 0:
        return ""
    return "".join(" " if c == 0 else _BLOCKS[min(7, int(7 * c / top + 0.5))] for c in counts)


def _f(value: Any) -> str:
    """Compact numbers for narrow tables: 3-4 significant digits, no exponent below 1e6."""
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    a = abs(value)
    if a >= 1e6 or (0 < a < 1e-3):
        return f"{value:.2e}"
    if a >= 1000:
        return f"{value:.0f}"
    if a >= 100:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _top(stats: dict[str, Any], k: int = 3) -> str:
    items = list((stats.get("top") or {}).items())[:k]
    shown = ", ".join(f"{v[:16]}{'…' if len(v) > 16 else ''} {c}" for v, c in items)
    return shown + (", …" if stats.get("distinct", 0) > k else "")


def render_explore(result: ExploreResult, console: Console) -> None:
    """Print the profile as rich tables (numeric, categorical/text, target, hints)."""
    from rich import box
    from rich.table import Table

    head = f"[bold]{result.source}[/]: {result.rows} rows, {len(result.kinds)} features"
    if result.target:
        head += f", target [bold]{result.target}[/] ({result.task})"
        if result.dropped_missing_target:
            head += f"; {result.dropped_missing_target} rows without a target left out"
    console.print(head)
    numeric = [n for n, k in result.kinds.items() if k == "numeric"]
    other = [n for n, k in result.kinds.items() if k != "numeric"]
    assoc = result.association
    if numeric:
        wide = console.width >= 120
        stats = ("mean", "std", "min", "q25", "median", "q75", "max") if wide else ("mean", "min", "median", "max")
        t = Table(title="Numeric columns", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        heads = {"q25": "25%", "median": "median", "q75": "75%"}
        cols = ["column", "miss%", *(heads.get(k, k) for k in stats), *(["vs target"] if assoc else []), "histogram"]
        for c in cols:
            t.add_column(c, justify="left" if c in ("column", "histogram") else "right",
                         no_wrap=c in ("column", "histogram"))
        for name in numeric:
            s = result.columns[name]
            row = [name, f"{s['missing_pct']:.1f}", *(_f(s[k]) for k in stats)]
            if assoc:
                row.append(_f(assoc[name]["value"]))
            row.append(sparkline(s["histogram"]["counts"]))
            t.add_row(*row)
        console.print(t)
    if other:
        t = Table(title="Categorical and text columns", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
        for c in ["column", "kind", "miss%", "distinct", *(["vs target"] if assoc else []), "top values"]:
            t.add_column(c, justify="right" if c in ("miss%", "distinct", "vs target") else "left",
                         no_wrap=c == "column")
        for name in other:
            s = result.columns[name]
            row = [name, s["kind"], f"{s['missing_pct']:.1f}", str(s["distinct"])]
            if assoc:
                row.append(_f(assoc[name]["value"]))
            row.append(_top(s))
            t.add_row(*row)
        console.print(t)
    if result.class_balance:
        total = sum(result.class_balance.values())
        t = Table(title=f"Class balance of '{result.target}'", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, min_width=40)
        for c in ("class", "rows", "share"):
            t.add_column(c, justify="left" if c == "class" else "right")
        for label, count in result.class_balance.items():
            t.add_row(label, str(count), f"{100 * count / total:.1f}%")
        console.print(t)
    if result.target_stats:
        s = result.target_stats
        console.print(f"target '{result.target}': mean {_f(s['mean'])}, std {_f(s['std'])}, "
                      f"min {_f(s['min'])}, median {_f(s['median'])}, max {_f(s['max'])}  "
                      f"{sparkline(s['histogram']['counts'])}")
    if assoc:
        measures = sorted({a["measure"] for a in assoc.values() if a["value"] is not None})
        console.print(f"[dim]vs target: {', '.join(measures)} (0 = unrelated, 1 = determined)[/]")
    pairs = _strong_pairs(result)
    if pairs:
        console.print("Strongly correlated numeric pairs: " + ", ".join(
            f"{a} ~ {b} (r={r:+.2f})" for a, b, r in pairs[:8]))
    if result.hints:
        console.print("[bold yellow]Hints[/]")
        for h in result.hints:
            console.print(f"  [yellow]{h.kind}[/]: {h.message}", highlight=False)
    else:
        console.print("No hints: no constant, id-like, mostly-missing or leaking columns found.")
    if result.report:
        console.print(f"report: {result.report}")


def _strong_pairs(result: ExploreResult, threshold: float = 0.8) -> list[tuple[str, str, float]]:
    names = list(result.correlations)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            r = result.correlations[a].get(b)
            if r is not None and abs(r) >= threshold:
                out.append((a, b, r))
    return sorted(out, key=lambda p: -abs(p[2]))


def _distribution_grid(result: ExploreResult) -> str:
    names = list(result.kinds)[:MAX_PLOTS]
    ncols = 4
    nrows = (len(names) + ncols - 1) // ncols
    fig = hk.new_figure(12, 2.4 * nrows)
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        s = result.columns[name]
        if "histogram" in s:
            edges, counts = s["histogram"]["bin_edges"], s["histogram"]["counts"]
            ax.stairs(counts, edges, fill=True, alpha=0.7)
            ax.set_xlabel("length (chars)" if s["kind"] == "text" else "", fontsize=7)
        else:
            top = list(s["top"].items())[:8]
            ax.barh([str(k)[:14] for k, _ in top][::-1], [v for _, v in top][::-1])
        ax.set_title(f"{name} ({s['kind']})", fontsize=8)
        ax.tick_params(labelsize=7)
    more = len(result.kinds) - len(names)
    note = f'<p class="note">{more} more columns not drawn.</p>' if more > 0 else ""
    return hk.image(fig, "distributions") + note


def _target_plot(result: ExploreResult) -> str:
    fig = hk.new_figure(6, 3.2)
    ax = fig.add_subplot()
    if result.class_balance:
        labels = list(result.class_balance)
        ax.bar(labels, [result.class_balance[k] for k in labels])
        ax.set(ylabel="rows", title=f"Class balance of {result.target}")
        ax.tick_params(axis="x", rotation=30)
    elif result.target_stats:
        h = result.target_stats["histogram"]
        ax.stairs(h["counts"], h["bin_edges"], fill=True, alpha=0.7)
        ax.set(ylabel="rows", title=f"Distribution of {result.target}")
    return hk.image(fig, "target")


def _association_plot(result: ExploreResult) -> str:
    items = [(n, a["value"]) for n, a in result.association.items() if a["value"] is not None]
    items = sorted(items, key=lambda p: -abs(p[1]))[:25]
    fig = hk.new_figure(6, max(2.5, 0.28 * len(items) + 1.2))
    ax = fig.add_subplot()
    ax.barh([n for n, _ in items][::-1], [v for _, v in items][::-1])
    ax.set(xlabel="association with the target", title="Feature vs target")
    rows = [(n, a["measure"], a["value"]) for n, a in result.association.items()]
    return hk.image(fig, "association with target") + hk.table(["feature", "measure", "value"], rows)


def _heatmap(result: ExploreResult) -> str:
    names = list(result.correlations)[:MAX_HEATMAP]
    m = np.array([[np.nan if result.correlations[a][b] is None else result.correlations[a][b]
                   for b in names] for a in names], dtype=float)
    size = max(4.0, 0.35 * len(names) + 2.5)
    fig = hk.new_figure(size + 1, size)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title("Pearson correlation (numeric features)")
    return hk.image(fig, "correlation heatmap")


def _columns_table(result: ExploreResult) -> str:
    rows = []
    for name, s in result.columns.items():
        detail = (f"mean {_f(s.get('mean'))}, std {_f(s.get('std'))}, min {_f(s.get('min'))}, "
                  f"q25 {_f(s.get('q25'))}, median {_f(s.get('median'))}, q75 {_f(s.get('q75'))}, "
                  f"max {_f(s.get('max'))}") if s["kind"] == "numeric" else _top(s, 6)
        rows.append((name, s["kind"], f"{s['missing_pct']:.1f}", s["distinct"], detail))
    return hk.table(["column", "kind", "missing %", "distinct", "statistics / top values"], rows)


def write_explore_report(path: Path, result: ExploreResult) -> Path:
    """Write the self-contained HTML profile of ``result`` atomically."""
    hints = "".join(f'<div class="hint"><b>{hk.esc(h.kind)}</b>: {hk.esc(h.message)}</div>'
                    for h in result.hints) or '<p class="note">No hints.</p>'
    sections = [
        hk.section("Hints", hints, "hints"),
        hk.section("Columns", _columns_table(result), "columns"),
        hk.section("Distributions", _distribution_grid(result), "distributions"),
    ]
    if result.target:
        sections.append(hk.section(f"Target: {result.target} ({result.task})", _target_plot(result), "target"))
        sections.append(hk.section("Association with the target", _association_plot(result), "association"))
    if len(result.correlations) >= 2:
        sections.append(hk.section("Correlations", _heatmap(result), "correlations"))
    subtitle = (f"edgeml explore · {result.rows} rows · {len(result.kinds)} features"
                + (f" · target {result.target} ({result.task})" if result.target else ""))
    return hk.write_atomic(path, hk.page(f"Data profile: {result.source}", subtitle, sections))
