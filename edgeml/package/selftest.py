"""The bundle's self-test: up to 16 holdout rows and what the shipped model outputs for them.

``selftest.json`` = ``{"rows": [{feature: value}], "expected": {output: [...]}, "atol": f}``.
Rows are raw feature values as a device receives them (numbers, strings, ``null`` for
missing). Expected values come from onnxruntime running the exact ``model.onnx`` shipped, so a
device that reproduces them runs the same model the same way.

Row choice is deterministic: holdout order, one row of each class (or anomaly label) first,
skipping rows that sit on a decision boundary (top-two probabilities or the anomaly score
within 1e-3) where a different CPU's float rounding could flip the label. ``atol`` is 1e-4
relative to the largest float output (at least 1e-4): float32 results from another CPU's
SIMD paths differ in the last bits, never by that much. Expected values are computed on exactly
the chosen rows as one batch, the way ``verify`` runs them: a dynamically quantized (int8) model
scales activations per batch, so its output for a row depends on the rows batched with it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeml.bundle.derive import request_inputs
from edgeml.bundle.feeds import rows_to_columns, to_feeds
from edgeml.bundle.manifest import DerivedInput, InputSpec, OutputSpec
from edgeml.bundle.session import cpu_session
from edgeml.errors import InputError, PackagingError

__all__ = ["MAX_ROWS", "build_selftest", "output_names", "selftest_bytes"]

MAX_ROWS = 16
MAX_CANDIDATES = 1000  # holdout rows considered
BOUNDARY = 1e-3


def output_names(outputs: OutputSpec) -> list[str]:
    return [n for n in (outputs.label, outputs.probabilities, outputs.prediction, outputs.score) if n]


def _value(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(float(v)) else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def _run(session: Any, inputs: Sequence[InputSpec], rows: list[dict[str, Any]], names: list[str],
         derived: Sequence[DerivedInput] = ()) -> dict[str, np.ndarray]:
    feeds = to_feeds(inputs, rows_to_columns(rows), derived)
    return dict(zip(names, session.run(names, feeds), strict=True))


def _margins(out: dict[str, np.ndarray], outputs: OutputSpec) -> np.ndarray | None:
    if outputs.probabilities and outputs.probabilities in out:
        p = np.sort(np.asarray(out[outputs.probabilities], dtype=np.float64), axis=1)
        return p[:, -1] - p[:, -2] if p.shape[1] > 1 else None
    if outputs.score and outputs.score in out:
        return np.abs(np.ravel(np.asarray(out[outputs.score], dtype=np.float64)))
    return None


def build_selftest(model: bytes, inputs: Sequence[InputSpec], outputs: OutputSpec, X: Any,
                   derived: Sequence[DerivedInput] = (), raw: Any = None) -> dict[str, Any]:
    """Pick the rows from the holdout frame ``X`` and compute their expected outputs.

    ``derived`` inputs: the rows carry the raw values from ``raw`` (aligned with ``X``), as a
    device sends them, in place of the derived features."""
    names = output_names(outputs)
    head = X.iloc[:MAX_CANDIDATES]
    columns = {spec.name: [_value(v) for v in head[spec.name].tolist()]
               for spec in request_inputs(inputs, derived) if spec.name in head.columns}
    for d in derived:
        columns[d.source] = [_value(v) for v in raw[d.source].iloc[:MAX_CANDIDATES].tolist()]
    order = [spec.name for spec in request_inputs(inputs, derived)]
    rows = [{k: columns[k][i] for k in order} for i in range(len(head))]
    try:
        to_feeds(inputs, rows_to_columns(rows), derived)
        candidates = rows
    except InputError:  # some row has e.g. a missing value where training had none
        candidates = []
        for row in rows:
            try:
                to_feeds(inputs, rows_to_columns([row]), derived)
            except InputError:
                continue
            candidates.append(row)
    if not candidates:
        raise PackagingError("no holdout row can be fed to the model for the self-test")
    session = cpu_session(model)
    out = _run(session, inputs, candidates, names, derived)
    margins = _margins(out, outputs)
    usable = [i for i in range(len(candidates)) if margins is None or margins[i] > BOUNDARY]
    usable = usable or list(range(len(candidates)))
    label = outputs.label
    chosen: list[int] = []
    if label:
        labels = [str(v) for v in np.ravel(out[label])]
        seen: set[str] = set()
        for i in usable:
            if labels[i] not in seen and len(chosen) < MAX_ROWS:
                seen.add(labels[i])
                chosen.append(i)
    chosen += [i for i in usable if i not in chosen][: MAX_ROWS - len(chosen)]
    chosen.sort()
    picked = [candidates[i] for i in chosen]
    # Run again on exactly these rows: a dynamically quantized model scales its activations per
    # batch, so a row's output depends on the rows it is batched with.
    final = _run(session, inputs, picked, names, derived)
    expected = {n: np.asarray(v).tolist() for n, v in final.items()}
    floats = [np.asarray(v, dtype=np.float64) for v in final.values() if np.asarray(v).dtype.kind == "f"]
    biggest = max((float(np.nanmax(np.abs(f))) for f in floats if f.size), default=1.0)
    atol = float(f"{1e-4 * max(1.0, biggest):.1g}")
    return {"rows": picked, "expected": expected, "atol": atol}


def selftest_bytes(selftest: dict[str, Any]) -> bytes:
    """Canonical bytes of ``selftest.json`` (sorted keys, 2-space indent)."""
    return (json.dumps(selftest, indent=2, sort_keys=True) + "\n").encode()
