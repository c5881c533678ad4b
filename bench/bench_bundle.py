"""What a bundle costs on a device, per shipped recipe: float vs int8.

    python bench/bench_bundle.py                       # every models/*.yaml, target x86_64
    python bench/bench_bundle.py models/digits.yaml --target rpi4 --runs 500

Each recipe is trained once into a temporary registry, packaged with ``--quantize none``
(float) and ``--quantize int8``, and each model is measured side by side in this run:

- bundle size (bytes) and model.onnx size;
- RAM the loaded model adds to an onnxruntime process (fresh subprocess, resident-set delta
  after loading it and running the self-test rows: :mod:`edgeml.package.memprobe`);
- batch-1 latency, median over ``--runs`` calls, float and int8 interleaved so machine noise
  hits both alike (1 intra-op thread);
- the holdout metric of each (int8 refused by the quality gate is still measured, and flagged).

Ratios are int8 / float. Numbers are from the packaging host; on a Raspberry Pi, latency is
several times higher, the RAM figures are close (same onnxruntime, same model).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeml.bundle.feeds import rows_to_columns, to_feeds  # noqa: E402
from edgeml.bundle.reader import open_bundle  # noqa: E402
from edgeml.bundle.session import cpu_session  # noqa: E402
from edgeml.errors import EdgeMLError  # noqa: E402
from edgeml.package.builder import PackageResult, package  # noqa: E402
from edgeml.package.fit import measure_memory  # noqa: E402


def _latencies(models: list[bytes], feeds: dict[str, np.ndarray], runs: int) -> list[float]:
    sessions = [cpu_session(m) for m in models]
    for s in sessions:
        for _ in range(10):
            s.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[i].append((time.perf_counter() - t0) * 1000)
    return [statistics.median(t) for t in times]


def _measure(result: PackageResult) -> dict[str, Any]:
    bundle = open_bundle(result.path)
    model = bundle.read("model.onnx")
    rows = json.loads(bundle.read("selftest.json"))["rows"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model)
        mem = measure_memory(path, inputs=bundle.manifest.inputs, rows=rows)
    return {"bundle": result.path.stat().st_size, "model": len(model), "ram": mem["added_mb"],
            "onnx": model, "rows": rows, "manifest": bundle.manifest}


def _int8(ref: str, registry: Path, out: Path, target: str, console: Console) -> tuple[PackageResult, str]:
    try:
        return package(ref, target=target, registry=registry, out_dir=out, quantize="int8",
                       console=console), "shipped"
    except EdgeMLError as exc:  # refused by the quality or fit gate: measure it anyway
        return package(ref, target=target, registry=registry, out_dir=out, quantize="none",
                       console=console), f"refused: {str(exc)[:60]}"


def bench_recipe(recipe: Path, target: str, runs: int, work: Path) -> list[dict[str, Any]]:
    from edgeml.convert.quantize import quantize_dynamic_int8
    from edgeml.train.workflow import train

    quiet = Console(file=io.StringIO())
    registry = work / "registry"
    trained = train(recipe, registry=registry, console=quiet)
    ref = trained.ref
    fl = _measure(package(ref, target=target, registry=registry, out_dir=work / "float",
                          quantize="none", console=quiet))
    int8_result, status = _int8(ref, registry, work / "int8", target, quiet)
    q = _measure(int8_result)
    if not int8_result.manifest.onnx.quantized:  # refused, or nothing to quantize: quantize anyway
        q["onnx"] = quantize_dynamic_int8(fl["onnx"])
        q["model"] = len(q["onnx"])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(q["onnx"])
            q["ram"] = measure_memory(path, inputs=fl["manifest"].inputs, rows=fl["rows"])["added_mb"]
    feeds = to_feeds(fl["manifest"].inputs, rows_to_columns(fl["rows"][:1]))
    lat = _latencies([fl["onnx"], q["onnx"]], feeds, runs)
    family = (trained.entry.meta.get("model") or {}).get("family", "?")
    metric = int8_result.quantization.report.get("metric_name", "")
    return [
        {"recipe": trained.entry.name, "family": family, "variant": "float", "bundle": fl["bundle"],
         "model": fl["model"], "ram": fl["ram"], "latency": lat[0],
         "metric": f"{metric} {int8_result.quantization.report['metric_before']:.4f}" if metric else "",
         "status": "shipped"},
        {"recipe": trained.entry.name, "family": family, "variant": "int8", "bundle": q["bundle"],
         "model": q["model"], "ram": q["ram"], "latency": lat[1],
         "metric": f"{metric} {int8_result.quantization.report['metric_after']:.4f}" if metric else "",
         "status": status},
    ]


def _ratio(r: dict[str, Any], f: dict[str, Any] | None, key: str) -> str:
    return f"{r[key] / f[key]:.2f}" if f and f[key] else "-"


def _print(rows: list[dict[str, Any]]) -> None:
    head = ["recipe", "family", "variant", "bundle B", "model B", "RAM MiB", "RAM/file",
            "p50 ms", "size x", "RAM x", "latency x", "holdout", "int8"]
    table = [head]
    floats = {r["recipe"]: r for r in rows if r["variant"] == "float"}
    for r in rows:
        f = floats.get(r["recipe"])
        if "error" in r:
            table.append([r["recipe"], "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", r["error"][:50], ""])
            continue
        per_byte = r["ram"] * 1024 * 1024 / max(r["model"], 1)
        table.append([r["recipe"], r["family"], r["variant"], f"{r['bundle']:,}", f"{r['model']:,}",
                      f"{r['ram']:.1f}", f"{per_byte:.0f}x", f"{r['latency']:.3f}",
                      _ratio(r, f, "bundle"), _ratio(r, f, "ram"), _ratio(r, f, "latency"),
                      r["metric"], r["status"]])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(c.rjust(w) if i >= 3 and i <= 10 else c.ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", type=Path, help="recipes (default: models/*.yaml)")
    parser.add_argument("--target", default="x86_64", help="device profile (default x86_64)")
    parser.add_argument("--runs", type=int, default=300, help="latency calls per model (default 300)")
    args = parser.parse_args(argv)
    recipes = args.recipes or sorted((ROOT / "models").glob("*.yaml"))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeml-bench-") as tmp:
        for n, recipe in enumerate(recipes):
            print(f"[{n + 1}/{len(recipes)}] {recipe.name}", file=sys.stderr, flush=True)
            try:
                rows += bench_recipe(recipe, args.target, args.runs, Path(tmp) / recipe.stem)
            except (EdgeMLError, zipfile.BadZipFile) as exc:
                rows.append({"recipe": recipe.stem, "error": f"{type(exc).__name__}: {exc}"})
    print(f"target {args.target}; RAM = resident set added by the loaded model (fresh process); "
          f"p50 = batch-1 median of {args.runs}; x = int8 / float")
    _print(rows)


if __name__ == "__main__":
    main()
