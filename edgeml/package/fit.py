"""Does a model fit its target device? Checked before anything is written.

Versions: every opset the model imports must be within the profile (``ai.onnx`` <=
``max_opset``, ``ai.onnx.ml`` <= ``max_ml_opset``; ``com.microsoft`` is onnxruntime's own and
allowed; any other domain needs a custom-op library and is refused), and its IR version <=
``max_ir_version``.

Memory: the model is loaded in onnxruntime in a fresh subprocess
(:mod:`edgeml.package.memprobe`) that runs the self-test rows once; what the model adds to the
process's resident set (the larger of steady state and peak) plus the profile's
``runtime_overhead_mb`` (default 80 MiB: Python, numpy, onnxruntime and paho-mqtt in the
runtime process, measured at 60-75 MiB on x86-64 and aarch64) must stay within
``memory_budget_mb``. Tree ensembles typically take 10-15x their file size once loaded, so the
file size alone says little. The measurement is made on the packaging host with the intra-op
threads chosen for the bundle; the same onnxruntime on the device lands within a few MiB.

Both run in the ``fit`` stage (:mod:`edgeml.package.stages`), on the model that ships.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeml.bundle.manifest import InputSpec
from edgeml.errors import PackagingError
from edgeml.package.profiles import DeviceProfile

__all__ = ["MemoryFit", "check_memory", "check_opsets", "measure_memory"]

ML_DOMAIN = "ai.onnx.ml"
RUNTIME_DOMAINS = ("com.microsoft",)  # onnxruntime's contrib ops (quantization may use them)


@dataclass(frozen=True)
class MemoryFit:
    """What loading the model costs and how that compares with the profile's budget (MiB)."""

    model_bytes: int
    added_mb: float  # the model's share: max(steady, peak while loading and running)
    steady_mb: float
    peak_mb: float
    runtime_overhead_mb: int
    budget_mb: int
    host_baseline_mb: float  # the probe process before the model, on this host

    @property
    def total_mb(self) -> float:
        return self.runtime_overhead_mb + self.added_mb

    @property
    def fits(self) -> bool:
        return self.total_mb <= self.budget_mb

    @property
    def ratio(self) -> float:
        """RAM added per byte of model file."""
        return self.added_mb * 1024 * 1024 / max(self.model_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_mb": round(self.total_mb, 2), "fits": self.fits,
                "ram_per_file_byte": round(self.ratio, 2)}


def check_opsets(opsets: Mapping[str, int], ir_version: int, profile: DeviceProfile) -> None:
    """Raise PackagingError naming every version above the profile's limits, with the figures."""
    problems: list[str] = []
    for domain, version in sorted(opsets.items()):
        if domain in ("", "ai.onnx"):
            if version > profile.max_opset:
                problems.append(f"ai.onnx opset {version} (max {profile.max_opset})")
        elif domain == ML_DOMAIN:
            if version > profile.max_ml_opset:
                problems.append(f"ai.onnx.ml opset {version} (max {profile.max_ml_opset})")
        elif domain not in RUNTIME_DOMAINS:
            problems.append(f"custom domain {domain!r} (onnxruntime has no kernels for it)")
    if ir_version > profile.max_ir_version:
        problems.append(f"IR version {ir_version} (max {profile.max_ir_version})")
    if problems:
        raise PackagingError(
            f"the model does not fit {profile.name} (onnxruntime {profile.onnxruntime}): it needs "
            + ", ".join(problems)
            + ". Convert for an older opset or pick a target with a newer onnxruntime."
        )


def measure_memory(
    model_path: Path,
    *,
    inputs: Sequence[InputSpec] | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
    intra_op: int = 1,
    inter_op: int = 1,
    timeout: float = 600,
) -> dict[str, Any]:
    """Run :mod:`edgeml.package.memprobe` on ``model_path`` in a fresh interpreter."""
    with tempfile.TemporaryDirectory(prefix="edgeml-mem-") as tmp:
        cmd = [sys.executable, "-m", "edgeml.package.memprobe", str(model_path),
               "--intra", str(intra_op), "--inter", str(inter_op)]
        if inputs is not None and rows:
            selftest = Path(tmp) / "rows.json"
            selftest.write_text(json.dumps(
                {"inputs": [asdict(s) for s in inputs], "rows": list(rows)}, allow_nan=True))
            cmd += ["--selftest", str(selftest)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PackagingError(f"measuring the model's memory timed out after {timeout:g} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PackagingError(f"the model does not load in onnxruntime (memory probe): {tail}")
    try:
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError) as exc:
        raise PackagingError(f"memory probe printed no result: {proc.stdout[-200:]!r}") from exc


def check_memory(
    model_path: Path,
    profile: DeviceProfile,
    *,
    inputs: Sequence[InputSpec] | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
    what: str = "the model",
    intra_op: int = 1,
) -> MemoryFit:
    """Measure the model and raise PackagingError, with the figures, if it exceeds the budget."""
    m = measure_memory(model_path, inputs=inputs, rows=rows, intra_op=intra_op,
                       inter_op=profile.threads.inter_op)
    fit = MemoryFit(
        model_bytes=int(m["model_bytes"]),
        added_mb=float(m["added_mb"]),
        steady_mb=float(m["steady_mb"]),
        peak_mb=float(m["peak_mb"]),
        runtime_overhead_mb=profile.runtime_overhead_mb,
        budget_mb=profile.memory_budget_mb,
        host_baseline_mb=float(m["baseline_mb"]),
    )
    if not fit.fits:
        raise PackagingError(
            f"{what} does not fit {profile.name}'s memory budget: loading model.onnx "
            f"({fit.model_bytes / 1024 / 1024:.1f} MiB file) adds {fit.added_mb:.1f} MiB in onnxruntime; "
            f"with {fit.runtime_overhead_mb} MiB for the runtime process that is {fit.total_mb:.1f} MiB, "
            f"over memory_budget_mb {fit.budget_mb} ({profile.model_budget_mb} MiB left for a model). "
            f"Use a smaller model (fewer or shallower trees), --quantize int8, or a bigger device."
        )
    return fit
