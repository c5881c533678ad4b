"""Measure the RAM a model adds to an onnxruntime process (run as a subprocess).

``python -m edgeml.package.memprobe MODEL [--selftest SELFTEST.json] [--intra N] [--inter N]``
prints one JSON object. The process first imports what the device runtime imports (numpy,
onnxruntime, edgeml.bundle), takes that resident set as its baseline, then loads the model,
runs the self-test rows once (first-run allocations count) and reads the resident set again
and its peak. Device-safe: standard library, numpy and onnxruntime only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best we have
        return peak_bytes()


def peak_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def measure(model: Path, selftest: Path | None, intra: int, inter: int) -> dict[str, Any]:
    import numpy as np  # noqa: F401  (part of the runtime baseline)
    import onnxruntime as ort

    from edgeml.bundle.feeds import rows_to_columns, to_feeds
    from edgeml.bundle.manifest import InputSpec

    feeds = None
    if selftest is not None:
        data = json.loads(selftest.read_text())
        specs = [InputSpec(**spec) for spec in data["inputs"]]
        feeds = to_feeds(specs, rows_to_columns(data["rows"]))
    gc.collect()
    base_rss, base_peak = rss_bytes(), peak_bytes()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra
    opts.inter_op_num_threads = inter
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    if feeds is not None:
        session.run(None, feeds)
        session.run(None, feeds)
    gc.collect()
    rss, peak = rss_bytes(), peak_bytes()
    steady = max(0, rss - base_rss)
    transient = max(0, peak - base_rss) if peak > base_peak else steady
    return {
        "onnxruntime": ort.__version__,
        "baseline_mb": round(base_rss / MIB, 2),
        "steady_mb": round(steady / MIB, 2),
        "peak_mb": round(transient / MIB, 2),
        "added_mb": round(max(steady, transient) / MIB, 2),
        "model_bytes": model.stat().st_size,
        "ran_selftest": feeds is not None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edgeml.package.memprobe")
    parser.add_argument("model", type=Path)
    parser.add_argument("--selftest", type=Path, default=None,
                        help="JSON {inputs: [InputSpec], rows: [{feature: value}]}")
    parser.add_argument("--intra", type=int, default=1)
    parser.add_argument("--inter", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model, args.selftest, args.intra, args.inter)))


if __name__ == "__main__":
    main()
