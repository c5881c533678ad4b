"""Predictor latency and memory, measured side by side in one run.

(a) batch-1 latency for every recipe in models/*.yaml: ``Predictor.predict`` vs the bare
    ``onnxruntime.InferenceSession.run`` on the same model.onnx (same session options,
    feeds prebuilt) vs the scikit-learn pipeline's ``predict`` on one row. The three are
    interleaved round by round; medians of the per-round means are reported. The clock is
    the process's CPU time by default (all threads: an onnxruntime pool that spins is
    counted), which a shared, loaded machine disturbs far less than elapsed time.
(d) process RSS after loading each bundle with ``Predictor`` vs a bare onnxruntime process
    with the same model (fresh subprocesses, one prediction each).

Targets: Predictor <= 1.3x bare ORT; >= 10x faster than scikit-learn; RSS <= bare + 20 MiB.

    python bench/bench_predictor.py [--recipes iris,penguins] [--work DIR] [--rounds 9]
                                    [--clock cpu|wall]

Recipes are trained into a registry under --work and packaged for x86_64 once; later runs
reuse the bundles there. A recipe that cannot be trained or packaged is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RSS_PROBE = r"""
import sys, zipfile
mode, bundle, row = sys.argv[1], sys.argv[2], __import__("json").loads(sys.argv[3])
def rss():
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out
if mode == "bare":
    import numpy as np, onnxruntime as ort
    from edgeml.bundle.manifest import Manifest
    with zipfile.ZipFile(bundle) as zf:
        model, manifest = zf.read("model.onnx"), Manifest.from_json(zf.read("manifest.json"))
    from edgeml.bundle.session import cpu_session
    sess = cpu_session(model, threads=manifest.runtime.intra_op_threads,
                       inter_op_threads=manifest.runtime.inter_op_threads)
    feeds = {s.name: np.array([[row[s.name] if row[s.name] is not None else
                                ("" if s.dtype == "string" else float("nan"))]],
                              dtype=object if s.dtype == "string" else np.float32)
             for s in manifest.inputs}
    sess.run(None, feeds)
else:
    from edgeml.runtime.predictor import Predictor
    Predictor(bundle).predict([row])
print(__import__("json").dumps(rss()))
"""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build(recipes: list[str], work: Path) -> list[tuple[str, Path, Path]]:
    """Train and package each recipe once (reused from --work on later runs)."""
    from rich.console import Console

    from edgeml.package.builder import package
    from edgeml.train.workflow import train

    registry, out_dir = work / "registry", work / "bundles"
    quiet = Console(quiet=True)
    built = []
    for recipe in recipes:
        existing = sorted(out_dir.glob(f"{recipe}-*-x86_64.edgeml"))
        if existing:
            built.append((recipe, existing[-1], registry))
            continue
        started = time.perf_counter()
        try:
            if not (registry / recipe).is_dir():
                train(REPO / "models" / f"{recipe}.yaml", registry=registry, console=quiet)
            result = package(recipe, target="x86_64", registry=registry, out_dir=out_dir,
                             console=quiet)
        except Exception as exc:
            log(f"  {recipe}: skipped ({type(exc).__name__}: {str(exc)[:160]})")
            continue
        log(f"  {recipe}: trained and packaged in {time.perf_counter() - started:.0f} s")
        built.append((recipe, Path(result.path), registry))
    return built


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
_clock = CLOCKS["cpu"]


def _mean_call(fn: Callable[[], Any], number: int) -> float:
    start = _clock()
    for _ in range(number):
        fn()
    return (_clock() - start) / number


def latency(bundle: Path, registry: Path, rounds: int, number: int) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    from edgeml.runtime.predictor import Predictor
    from edgeml.train.registry import Registry

    predictor = Predictor(bundle)
    entry = Registry(registry).resolve(f"{predictor.manifest.name}@{predictor.manifest.version}")
    X, _ = entry.load_holdout()
    pipeline = entry.load_pipeline()
    one = X.head(1)
    row = {k: (None if isinstance(v, float) and math.isnan(v) else v)
           for k, v in one.to_dict(orient="records")[0].items()}
    with zipfile.ZipFile(bundle) as zf:
        model = zf.read("model.onnx")
    # the very same session options as the Predictor's (threads from the manifest)
    sess = ort.InferenceSession(model, predictor.session.get_session_options(),
                                providers=["CPUExecutionProvider"])
    feeds = {k: np.array(v, copy=True) for k, v in predictor.feeds([row]).items()}
    rows = [row]
    candidates: dict[str, Callable[[], Any]] = {
        "bare_ort": lambda: sess.run(None, feeds),
        "predictor": lambda: predictor.predict(rows),
        "predictor_rows": lambda: predictor.predict(rows).rows(),
        "sklearn": lambda: pipeline.predict(one),
    }
    sk_number = max(20, number // 20)
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for fn in candidates.values():  # warm up
        for _ in range(20):
            fn()
    for _ in range(rounds):
        for key, fn in candidates.items():
            times[key].append(_mean_call(fn, sk_number if key == "sklearn" else number))
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    return {"us": med, "row": row,
            "ratio_vs_bare": med["predictor"] / med["bare_ort"],
            "speedup_vs_sklearn": med["sklearn"] / med["predictor"]}


def rss(bundle: Path, row: dict[str, Any], repeats: int = 3) -> dict[str, float]:
    """Median RSS (MiB) of fresh processes, alternating bare ORT and Predictor."""
    out: dict[str, list[float]] = {"bare": [], "predictor": []}
    for _ in range(repeats):
        for mode in ("bare", "predictor"):
            proc = subprocess.run([sys.executable, "-c", RSS_PROBE, mode, str(bundle),
                                   json.dumps(row)], capture_output=True, text=True, check=True,
                                  cwd=REPO)
            out[mode].append(json.loads(proc.stdout.strip().splitlines()[-1])["VmRSS"])
    return {k: statistics.median(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default=",".join(sorted(p.stem for p in (REPO / "models")
                                                             .glob("*.yaml"))))
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeml-bench"))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--number", type=int, default=2000, help="calls per round")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: CPU time of this process, all its threads (robust on a shared "
                             "machine); wall: elapsed time")
    args = parser.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    log(f"building bundles in {args.work} ...")
    built = build([r for r in args.recipes.split(",") if r], args.work)
    results = []
    for recipe, bundle, registry in built:
        log(f"measuring {recipe} ...")
        lat = latency(bundle, registry, args.rounds, args.number)
        mem = rss(bundle, lat["row"])
        results.append((recipe, lat, mem))

    print(f"\n(a) batch-1 latency, median of per-round means (us, {args.clock} time)")
    print(f"{'recipe':<16}{'bare ORT':>10}{'Predictor':>11}{'+rows()':>9}{'sklearn':>10}"
          f"{'pred/bare':>11}{'sklearn/pred':>14}")
    for recipe, lat, _ in results:
        us = lat["us"]
        print(f"{recipe:<16}{us['bare_ort']:>10.1f}{us['predictor']:>11.1f}"
              f"{us['predictor_rows']:>9.1f}{us['sklearn']:>10.0f}"
              f"{lat['ratio_vs_bare']:>10.2f}x{lat['speedup_vs_sklearn']:>13.0f}x")
    print("\n(d) process RSS after loading and one prediction (MiB, median of 3 processes)")
    print(f"{'recipe':<16}{'bare ORT':>10}{'Predictor':>11}{'delta':>9}")
    for recipe, _, mem in results:
        print(f"{recipe:<16}{mem['bare']:>10.1f}{mem['predictor']:>11.1f}"
              f"{mem['predictor'] - mem['bare']:>+9.1f}")
    if results:
        worst_ratio = max(lat["ratio_vs_bare"] for _, lat, _ in results)
        worst_speedup = min(lat["speedup_vs_sklearn"] for _, lat, _ in results)
        worst_rss = max(m["predictor"] - m["bare"] for _, _, m in results)
        print(f"\ntargets: Predictor <= 1.3x bare ORT: worst {worst_ratio:.2f}x "
              f"[{'ok' if worst_ratio <= 1.3 else 'MISSED'}]; >= 10x sklearn: worst "
              f"{worst_speedup:.0f}x [{'ok' if worst_speedup >= 10 else 'MISSED'}]; RSS <= bare "
              f"+ 20 MiB: worst {worst_rss:+.1f} MiB [{'ok' if worst_rss <= 20 else 'MISSED'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
