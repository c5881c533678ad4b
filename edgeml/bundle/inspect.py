"""What a bundle holds, as plain data for ``edgeml inspect`` (device-safe: standard library only)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from edgeml.bundle.manifest import MANIFEST, MODEL, SIGNATURE, Metrics
from edgeml.bundle.reader import open_bundle
from edgeml.errors import BundleError

__all__ = ["describe", "headline_metrics"]

# The holdout metrics worth a line in a summary, in this order.
HEADLINE = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_ovr", "log_loss",
            "r2", "rmse", "mae", "mape", "anomaly_rate", "precision", "recall", "f1")


def headline_metrics(metrics: Metrics) -> dict[str, float]:
    """The holdout metrics worth a summary line: the primary one first, then :data:`HEADLINE`."""
    order = [metrics.primary, *HEADLINE] if metrics.primary else list(HEADLINE)
    return {k: metrics.holdout[k] for k in dict.fromkeys(order) if k and k in metrics.holdout}


def describe(path: Path | str) -> dict[str, Any]:
    """Summary of the bundle at ``path``: identity, target, schema, quality, sizes, signature."""
    bundle = open_bundle(path)
    m = bundle.manifest
    try:
        with zipfile.ZipFile(bundle.path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{bundle.path.name}: cannot read: {exc}") from exc
    wheels = sorted(n for n in infos if n.startswith("wheels/") and n.endswith(".whl"))
    model = infos.get(MODEL)
    return {
        "file": str(bundle.path),
        "name": m.name,
        "version": m.version,
        "ref": m.ref,
        "task": m.task,
        "created_at": m.created_at,
        "edgeml_version": m.edgeml_version,
        "target": {
            "name": m.target.name,
            "arch": m.target.arch,
            "intra_op_threads": m.target.intra_op_threads,
            "inter_op_threads": m.target.inter_op_threads,
            "memory_budget_mb": m.target.memory_budget_mb,
        },
        "runtime": {
            "intra_op_threads": m.runtime.intra_op_threads,
            "inter_op_threads": m.runtime.inter_op_threads,
            "threads_chosen_by": m.runtime.threads_chosen_by,
        },
        "build_stages": [f"{s.get('name')}: {s.get('outcome')}" for s in m.build.get("stages", [])],
        "onnx": {
            "opset": m.onnx.opset,
            "ir_version": m.onnx.ir_version,
            "min_onnxruntime": m.onnx.min_onnxruntime,
            "quantized": m.onnx.quantized,
        },
        "inputs": [
            {
                "name": i.name,
                "kind": i.kind,
                "dtype": i.dtype,
                "nullable": i.nullable,
                "range": [i.min, i.max] if i.min is not None or i.max is not None else None,
                "categories": i.categories,
            }
            for i in m.inputs
        ],
        "derived_inputs": [
            {"source": d.source, "kind": d.kind, "timezone": d.timezone, "features": d.features,
             "inputs": d.names}
            for d in m.derived
        ],
        "outputs": {k: v for k, v in vars(m.outputs).items() if v is not None},
        "metrics": headline_metrics(m.metrics),
        "primary_metric": m.metrics.primary,
        "parity": m.parity,
        "quantization": m.quantization,
        "provenance": m.provenance,
        "sizes": {
            "bundle_bytes": bundle.path.stat().st_size,
            "model_bytes": model.file_size if model else None,
            "model_compressed_bytes": model.compress_size if model else None,
            "wheels": len(wheels),
            "wheels_bytes": sum(infos[w].file_size for w in wheels),
        },
        "wheels": [w.removeprefix("wheels/") for w in wheels],
        "signed": SIGNATURE in infos,
        "members": sorted(n for n in infos if n != MANIFEST),
    }
