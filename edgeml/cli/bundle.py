"""CLI commands of the bundle layer: ``inspect`` and ``verify`` (device-safe).

Nothing here imports scikit-learn, skl2onnx, onnx, pandas, matplotlib, yaml, pydantic or rich:
these commands run on the devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeml.cli.base import cli, json_option, print_json, text_table


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _table(rows: list[list[str]]) -> str:
    return text_table(rows, indent="  ")


def _input_detail(spec: dict[str, Any]) -> str:
    if spec["categories"]:
        cats = spec["categories"]
        more = f", … ({len(cats)})" if len(cats) > 6 else ""
        return ", ".join(cats[:6]) + more
    if spec["range"]:
        lo, hi = spec["range"]
        return f"{lo:g} .. {hi:g}" if lo is not None and hi is not None else ""
    return ""


def render_description(d: dict[str, Any]) -> str:
    """The human summary printed by ``edgeml inspect``."""
    t, o, s = d["target"], d["onnx"], d["sizes"]
    lines = [
        f"{d['ref']}  {d['task']}  for {t['name']} ({t['arch']})  created {d['created_at']}",
        f"file:     {d['file']}  {_size(s['bundle_bytes'])}",
        f"model:    model.onnx {_size(s['model_bytes'])} (opset {o['opset']}, IR {o['ir_version']}, "
        f"onnxruntime >= {o['min_onnxruntime']}{', int8 quantized' if o['quantized'] else ''})",
        f"wheels:   {s['wheels']} ({_size(s['wheels_bytes'])})" if s["wheels"] else "wheels:   none",
        f"signed:   {'yes (manifest.sig)' if d['signed'] else 'no'}",
        f"threads:  intra-op {d['runtime']['intra_op_threads']} ({d['runtime']['threads_chosen_by']}), "
        f"inter-op {d['runtime']['inter_op_threads']}"
        + (f"; memory budget {t['memory_budget_mb']} MiB" if t["memory_budget_mb"] else ""),
        "",
        "inputs:",
    ]
    rows = [["name", "kind", "dtype", "nullable", "values"]]
    rows += [[i["name"], i["kind"], i["dtype"], "yes" if i["nullable"] else "no", _input_detail(i)]
             for i in d["inputs"]]
    lines.append(_table(rows))
    for x in d.get("derived_inputs") or []:  # raw values the device sends, derived before ONNX
        lines.append(f"derived:  {x['source']} ({x['kind']}, naive = {x['timezone']}) -> "
                     + ", ".join(x["inputs"]))
    out = dict(d["outputs"])
    classes = out.pop("classes", None)
    label_dtype = out.pop("label_dtype", None)
    described = [f"{role}={name}" for role, name in out.items()]
    lines.append("outputs:  " + ", ".join(described) + (f" (label {label_dtype})" if label_dtype else ""))
    if classes:
        lines.append("classes:  " + ", ".join(classes))
    if d["metrics"]:
        primary = d.get("primary_metric")
        lines.append("metrics:  " + ", ".join(
            f"{k} {v:.4g}" + (" (primary)" if k == primary else "") for k, v in d["metrics"].items()
        ) + " (holdout)")
    parity = d["parity"]
    if parity:
        keys = [k for k in ("passed", "rows", "max_abs_diff", "label_mismatches") if k in parity]
        lines.append("parity:   " + (", ".join(f"{k} {parity[k]}" for k in keys) or str(parity)))
    q = d["quantization"]
    if q:
        lines.append(f"quantize: policy {q.get('policy', '?')}, applied {q.get('applied', False)}"
                     + (f" ({q['reason']})" if q.get("reason") else ""))
    prov = d["provenance"]
    if prov:
        lines.append("from:     " + ", ".join(f"{k} {str(prov[k])[:16]}" for k in
                                            ("registry_ref", "recipe_sha256", "data_sha256") if k in prov))
    return "\n".join(lines)


@cli.command("inspect")
@click.argument("bundle", type=click.Path(dir_okay=False))
@json_option
def inspect_cmd(bundle: str, as_json: bool) -> None:
    """Summarize a bundle: model, target, inputs, outputs, metrics, parity, sizes, signature.

    Example: edgeml inspect bundles/iris-1-rpi4.edgeml
    """
    from edgeml.bundle.inspect import describe

    data = describe(Path(bundle))
    if as_json:
        print_json(data)
    else:
        click.echo(render_description(data))


@cli.command("verify")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--public-key", type=click.Path(dir_okay=False), default=None,
              help="ed25519 public key (PEM): the bundle must carry a valid manifest.sig.")
@click.option("--no-selftest", is_flag=True, help="Skip running the self-test rows.")
@json_option
def verify_cmd(bundle: str, public_key: str | None, no_selftest: bool, as_json: bool) -> None:
    """Check a bundle: checksums, signature, the model loads, inputs/outputs, self-test.

    Exits 1 with `error: <bundle>: <check> check failed: ...` when a check fails.
    Example: edgeml verify bundles/iris-1-rpi4.edgeml --public-key keys/edgeml.pub
    """
    from edgeml.bundle.verify import verify_bundle

    report = verify_bundle(
        Path(bundle),
        public_key=Path(public_key) if public_key else None,
        run_selftest=not no_selftest,
        raise_on_failure=False,
    )
    if as_json:
        print_json(report.to_dict())
    else:
        click.echo(f"verify {report.path.name}")
        click.echo(_table([[c.name, c.status, c.detail] for c in report.checks]))
        if report.ok:
            click.echo("OK")
    report.raise_for_failure()
