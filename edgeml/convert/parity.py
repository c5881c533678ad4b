"""The parity gate: the ONNX model must predict what the scikit-learn pipeline predicts.

Both run on the same raw feature frame: scikit-learn on the float64 frame,
onnxruntime on per-input tensors (numeric as float32 with NaN, strings with ``""``
for missing), exactly as a device feeds them.

Tolerances (defaults):

* classification: every label agrees and ``max |Δp| <= 1e-4`` over all probabilities.
  A differing label is accepted only on a tie: scikit-learn's probability of the
  ONNX label is within ``prob_atol`` of its top probability (e.g. k-NN votes 2:2).
* regression: ``max |ŷ_onnx - ŷ_sklearn| / max(|ŷ_sklearn|, 1) <= 1e-4``.
* anomaly: every label agrees (except rows whose score is within ``score_atol`` of
  the 0 threshold) and ``max |Δscore| <= 1e-4``.

Float32 ties. The device computes in float32 (about 7 significant digits). When a
value sits on a tree's split threshold (quantized sensors and imputed medians repeat
values, and thresholds are midpoints that can equal one), scikit-learn's float64 and
the device's float32 can send it to different branches; neither answer is more
right. A failing row is accepted as a *float32 tie* (counted in ``float32_ties``)
only if the final estimator's input computed by ONNX matches scikit-learn's within
1e-4 relative, and scikit-learn's own final estimator, fed the device's input (as is,
or moved by 1e-6 relative, since the device's thresholds are float32 too), gives the
ONNX output within the tolerances above. Anything else is a real disagreement.

float32 limits otherwise: integers above 2**24 (~1.6e7: ids, epoch timestamps) are not
exact in float32; rescale or drop such features in the recipe. Values near 0 are
judged on absolute error (the ``max(|y|, 1)`` denominator).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeml._files import atomic_write
from edgeml.bundle.manifest import DerivedInput
from edgeml.errors import ConversionError, ParityError

__all__ = [
    "DEFAULT_PROB_ATOL",
    "DEFAULT_REL_TOL",
    "DEFAULT_SCORE_ATOL",
    "ParityReport",
    "check_parity",
    "frame_to_feeds",
]

DEFAULT_PROB_ATOL = 1e-4
DEFAULT_REL_TOL = 1e-4
DEFAULT_SCORE_ATOL = 1e-4
FEATURE_RTOL = 1e-4  # device vs scikit-learn features for a float32 tie
TIE_NUDGE = 1e-6  # relative move of the device's features when looking for a float32 tie
_SHOWN_ROWS = 5


@dataclass(frozen=True)
class ParityReport:
    """The parity gate's result; ``to_dict()`` goes into the manifest's ``parity`` field."""

    task: str
    rows: int
    passed: bool
    failing_rows: int
    tolerances: dict[str, float]
    label_agreement: float | None = None  # fraction of all rows with equal labels
    tied_rows: int = 0  # rows whose labels differ on an exact tie (accepted)
    float32_ties: int = 0  # rows off only by float32 rounding at a split threshold (accepted)
    # The max differences below leave out the float32 ties.
    max_abs_prob_diff: float | None = None
    max_rel_error: float | None = None
    max_abs_score_diff: float | None = None
    first_failing: list[Any] = field(default_factory=list)  # frame index labels

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["first_failing"] = [_jsonable(i) for i in self.first_failing]
        return d


def frame_to_feeds(X: Any, inputs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Per-input tensors from the raw frame; ``inputs`` are (name, onnx type like 'tensor(float)')."""
    feeds: dict[str, np.ndarray] = {}
    for name, onnx_type in inputs:
        if name not in X.columns:
            raise ConversionError(f"the frame has no column {name!r} for ONNX input {name!r}")
        col = X[name]
        if onnx_type == "tensor(string)":
            values = [_as_text(v) for v in col.astype(object).tolist()]
            feeds[name] = np.array(values, dtype=object).reshape(-1, 1)
        elif onnx_type == "tensor(float)":
            feeds[name] = col.to_numpy(dtype=np.float64, na_value=np.nan).astype(np.float32).reshape(-1, 1)
        else:
            raise ConversionError(f"ONNX input {name!r} has unsupported type {onnx_type}")
    return feeds


def _device_derived(X: Any, derived: Sequence[DerivedInput], raw: Any) -> Any:
    """``X`` with its derived columns recomputed from ``raw`` by the device's function."""
    if not derived:
        return X
    from edgeml.bundle.derive import derive_columns

    out = X.copy()
    for spec in derived:
        if raw is None or spec.source not in raw.columns:
            raise ConversionError(f"parity: no raw values of derived input {spec.source!r}")
        got = derive_columns([spec], {spec.source: raw[spec.source].tolist()})
        for name in spec.names:
            want = X[name].to_numpy(dtype=np.float64, na_value=np.nan)
            same = (got[name] == want) | (np.isnan(got[name]) & np.isnan(want))
            if not same.all():
                row = list(X.index)[int(np.argmin(same))]
                raise ParityError(
                    f"derived feature {name!r} differs between training and the device's "
                    f"derivation from {spec.source!r} (holdout row {row})"
                )
            out[name] = got[name]
    return out


def check_parity(
    pipeline: Any,
    onnx_model_bytes: bytes,
    X: Any,
    *,
    task: str,
    classes: list[str] | None = None,
    dump_dir: str | os.PathLike[str] | None = None,
    prob_atol: float = DEFAULT_PROB_ATOL,
    rel_tol: float = DEFAULT_REL_TOL,
    score_atol: float = DEFAULT_SCORE_ATOL,
    raise_on_failure: bool = True,
    derived: Sequence[DerivedInput] = (),
    raw: Any = None,
) -> ParityReport:
    """Compare scikit-learn and onnxruntime on ``X``; raise ParityError (naming rows) on failure.

    ``derived`` (the manifest's derived inputs) with ``raw`` (a frame of their raw values,
    aligned with ``X``): the ONNX side derives its features from the raw timestamps the way
    the device does (:func:`edgeml.bundle.derive.derive_columns`), and they must equal the
    training columns in ``X`` exactly.

    With ``dump_dir``, a failure writes ``rows.csv`` (failing rows, features and both
    outputs) and ``model.onnx`` there for debugging.
    """
    if task not in TASKS:
        raise ConversionError(f"task {task!r} is not one of {', '.join(TASKS)}")
    if len(X) == 0:
        raise ConversionError("parity needs at least one row")
    if task == "classification":
        fitted = [str(c) for c in pipeline.classes_]
        if classes is not None and [str(c) for c in classes] != fitted:
            raise ConversionError(f"classes {list(classes)} differ from the pipeline's classes_ {fitted}")
    tol = {"prob_atol": prob_atol, "rel_tol": rel_tol, "score_atol": score_atol}
    sess = _session(onnx_model_bytes)
    inputs = [(i.name, i.type) for i in sess.get_inputs()]
    ox = _onnx_outputs(_run(sess, frame_to_feeds(_device_derived(X, derived, raw), inputs)), task)
    sk = _sklearn_outputs(pipeline, X, task)
    bad, tied, columns = _compare(task, sk, ox, tol, pipeline)
    ties32 = np.zeros(len(X), dtype=bool)
    if bad.any():
        ties32 = _float32_ties(pipeline, onnx_model_bytes, X, inputs, bad, ox, task, tol)
        bad &= ~ties32
    index = list(X.index)
    failing = [index[i] for i in np.flatnonzero(bad)]
    report = ParityReport(
        task=task, rows=len(X), passed=not failing, failing_rows=len(failing),
        tolerances=_TOLERANCES[task](tol), first_failing=failing[:_SHOWN_ROWS],
        tied_rows=int(tied.sum()), float32_ties=int(ties32.sum()),
        **_stats(task, sk, ox, ~ties32),
    )
    if failing and raise_on_failure:
        where = _dump(dump_dir, X, bad, columns, onnx_model_bytes) if dump_dir is not None else None
        raise ParityError(_message(report, X, bad, columns, where))
    return report


# -- outputs and comparison ----------------------------------------------------

TASKS = ("classification", "regression", "anomaly")
_TOLERANCES = {
    "classification": lambda t: {"label_agreement": 1.0, "prob_atol": t["prob_atol"]},
    "regression": lambda t: {"rel_tol": t["rel_tol"]},
    "anomaly": lambda t: {"label_agreement": 1.0, "score_atol": t["score_atol"]},
}


@dataclass
class _Outputs:
    """Per-row outputs: label (str for classes, int64 for anomaly), proba [N, C], value [N]."""

    label: np.ndarray | None = None
    proba: np.ndarray | None = None
    value: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> _Outputs:
        return _Outputs(*(None if a is None else a[rows] for a in (self.label, self.proba, self.value)))


def _sklearn_outputs(est: Any, X: Any, task: str) -> _Outputs:
    if task == "classification":
        return _Outputs(
            label=np.array([str(v) for v in est.predict(X)], dtype=object),
            proba=np.asarray(est.predict_proba(X), dtype=np.float64),
        )
    if task == "regression":
        return _Outputs(value=np.ravel(np.asarray(est.predict(X), dtype=np.float64)))
    return _Outputs(
        label=np.ravel(np.asarray(est.predict(X))).astype(np.int64),
        value=np.ravel(np.asarray(est.decision_function(X), dtype=np.float64)),
    )


def _onnx_outputs(out: dict[str, Any], task: str) -> _Outputs:
    if task == "classification":
        return _Outputs(
            label=np.array([str(v) for v in np.ravel(_get(out, "label", 0))], dtype=object),
            proba=np.asarray(_get(out, "probabilities", 1), dtype=np.float64),
        )
    if task == "regression":
        return _Outputs(value=np.ravel(np.asarray(_get(out, "prediction", 0), dtype=np.float64)))
    return _Outputs(
        label=np.ravel(np.asarray(_get(out, "label", 0))).astype(np.int64),
        value=np.ravel(np.asarray(_get(out, "scores", 1), dtype=np.float64)),
    )


def _compare(
    task: str, sk: _Outputs, ox: _Outputs, tol: dict[str, float], est: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Rows out of tolerance, rows accepted as exact ties, and columns for messages/dumps."""
    if task == "regression":
        assert sk.value is not None and ox.value is not None
        _same_shape(sk.value, ox.value, "predictions")
        rel = _nan_as_inf(np.abs(ox.value - sk.value) / np.maximum(np.abs(sk.value), 1.0))
        cols = {"sklearn_prediction": sk.value, "onnx_prediction": ox.value, "rel_error": rel}
        return rel > tol["rel_tol"], np.zeros(len(rel), dtype=bool), cols
    assert sk.label is not None and ox.label is not None
    _same_shape(sk.label, ox.label, "labels")
    differ = sk.label != ox.label
    if task == "anomaly":
        assert sk.value is not None and ox.value is not None
        diff = _nan_as_inf(np.abs(ox.value - sk.value))
        tied = differ & (np.abs(sk.value) <= tol["score_atol"])
        cols = {"sklearn_label": sk.label, "onnx_label": ox.label, "sklearn_score": sk.value,
                "onnx_score": ox.value, "abs_score_diff": diff}
        return (differ & ~tied) | (diff > tol["score_atol"]), tied, cols
    assert sk.proba is not None and ox.proba is not None
    _same_shape(sk.proba, ox.proba, "probabilities")
    row_diff = _nan_as_inf(np.abs(ox.proba - sk.proba)).max(axis=1)
    col = {str(c): j for j, c in enumerate(est.classes_)}
    tied = np.array([
        bool(d) and ox.label[i] in col
        and sk.proba[i, col[ox.label[i]]] >= sk.proba[i].max() - tol["prob_atol"]
        for i, d in enumerate(differ)
    ], dtype=bool)
    cols = {
        "sklearn_label": sk.label, "onnx_label": ox.label, "abs_prob_diff": row_diff,
        **{f"sklearn_p[{c}]": sk.proba[:, j] for c, j in col.items()},
        **{f"onnx_p[{c}]": ox.proba[:, j] for c, j in col.items()},
    }
    return (differ & ~tied) | (row_diff > tol["prob_atol"]), tied, cols


def _stats(task: str, sk: _Outputs, ox: _Outputs, keep: np.ndarray) -> dict[str, Any]:
    """Label agreement over all rows; the max differences over rows that are not float32 ties."""
    stats: dict[str, Any] = {}
    if sk.label is not None and ox.label is not None:
        stats["label_agreement"] = float(np.mean(sk.label == ox.label))
    sk, ox = sk.take(keep), ox.take(keep)
    if not keep.any():
        return stats
    if sk.proba is not None and ox.proba is not None:
        stats["max_abs_prob_diff"] = float(_nan_as_inf(np.abs(ox.proba - sk.proba)).max())
    if task == "regression" and sk.value is not None and ox.value is not None:
        rel = np.abs(ox.value - sk.value) / np.maximum(np.abs(sk.value), 1.0)
        stats["max_rel_error"] = float(_nan_as_inf(rel).max())
    if task == "anomaly" and sk.value is not None and ox.value is not None:
        stats["max_abs_score_diff"] = float(_nan_as_inf(np.abs(ox.value - sk.value)).max())
    return stats


def _float32_ties(
    pipeline: Any, model: bytes, X: Any, inputs: list[tuple[str, str]], bad: np.ndarray,
    ox: _Outputs, task: str, tol: dict[str, float],
) -> np.ndarray:
    """Failing rows explained by float32 rounding of the features at a split threshold.

    The device computes the final estimator's input in float32. A row is accepted when
    (a) that input matches scikit-learn's within FEATURE_RTOL, and (b) scikit-learn's own
    final estimator, fed the device's input (as is, or all of it moved down or up by
    TIE_NUDGE relative: thresholds are float32 on the device), gives the ONNX output
    within tolerance.
    """
    accepted = np.zeros(len(X), dtype=bool)
    if len(getattr(pipeline, "steps", [])) < 2:
        return accepted
    from edgeml.convert.export import features_to_onnx
    from edgeml.convert.limits import opsets_of

    rows = np.flatnonzero(bad)
    head, final = pipeline[:-1], pipeline.steps[-1][1]
    kinds = [(name, "string" if t == "tensor(string)" else "float32") for name, t in inputs]
    try:
        head_model = features_to_onnx(head, kinds, opsets_of(model))
        sess = _session(head_model.SerializeToString())
        device = np.asarray(_run(sess, frame_to_feeds(X.iloc[rows], inputs))[sess.get_outputs()[0].name])
    except ConversionError:
        return accepted
    host = head.transform(X.iloc[rows])
    host = np.asarray(host.toarray() if hasattr(host, "toarray") else host, dtype=np.float64)
    device = device.astype(np.float64)
    if device.shape != host.shape:
        return accepted
    close = (np.abs(device - host) / np.maximum(np.abs(host), 1.0)).max(axis=1) <= FEATURE_RTOL
    nudge = np.maximum(np.abs(device), 1.0) * TIE_NUDGE
    explained = np.zeros(len(rows), dtype=bool)
    for inputs_seen in (device, device - nudge, device + nudge):
        again, _tied, _cols = _compare(task, _sklearn_outputs(final, inputs_seen, task), ox.take(rows), tol, final)
        explained |= ~again
    accepted[rows] = close & explained
    return accepted


# -- helpers -----------------------------------------------------------------


def _session(model: bytes) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ConversionError(f"onnxruntime cannot load the model: {exc}") from exc


def _run(sess: Any, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    try:
        values = sess.run(None, feeds)
    except Exception as exc:
        raise ConversionError(f"onnxruntime failed to run the model: {exc}") from exc
    return dict(zip([o.name for o in sess.get_outputs()], values, strict=True))


def _same_shape(sk: np.ndarray, ox: np.ndarray, what: str) -> None:
    if sk.shape != ox.shape:
        raise ConversionError(f"ONNX {what} have shape {ox.shape}, scikit-learn's {sk.shape}")


def _get(out: dict[str, Any], name: str, position: int) -> Any:
    if name in out:
        return out[name]
    values = list(out.values())
    if position < len(values):
        return values[position]
    raise ConversionError(f"the ONNX model has no output {name!r} (outputs: {list(out)})")


def _nan_as_inf(a: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(a), np.inf, a)


def _as_text(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v if isinstance(v, str) else str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    if isinstance(v, str) and len(v) > 60:
        return repr(v[:57] + "...")
    return repr(v.item() if isinstance(v, np.generic) else v)


def _message(report: ParityReport, X: Any, bad: np.ndarray, columns: dict[str, np.ndarray], where: Path | None) -> str:
    r = report
    parts = [f"ONNX and scikit-learn disagree on {r.failing_rows} of {r.rows} rows ({r.task}:"]
    if r.label_agreement is not None:
        parts.append(f" label agreement {r.label_agreement:.2%},")
    for key, value in (("max |Δp|", r.max_abs_prob_diff), ("max rel error", r.max_rel_error),
                       ("max |Δscore|", r.max_abs_score_diff)):
        if value is not None:
            parts.append(f" {key} {value:.3g},")
    limits = ", ".join(f"{k} {v:g}" for k, v in r.tolerances.items())
    lines = ["".join(parts) + f" tolerances: {limits}). First rows:"]
    positions = list(np.flatnonzero(bad))[:_SHOWN_ROWS]
    for pos in positions:
        row = X.iloc[pos]
        feats = ", ".join(f"{c}={_fmt(row[c])}" for c in X.columns)
        sk = ", ".join(f"{k}={_fmt(v[pos])}" for k, v in columns.items() if k.startswith("sklearn"))
        ox = ", ".join(f"{k}={_fmt(v[pos])}" for k, v in columns.items() if k.startswith("onnx"))
        lines.append(f"  row {X.index[pos]!r}: {feats} | {sk} | {ox}")
    if where is not None:
        lines.append(f"dump: {where} (rows.csv, model.onnx)")
    return "\n".join(lines)


def _dump(dump_dir: str | os.PathLike[str], X: Any, bad: np.ndarray, columns: dict[str, np.ndarray], model: bytes) -> Path:
    where = Path(dump_dir)
    where.mkdir(parents=True, exist_ok=True)
    rows = X.iloc[np.flatnonzero(bad)].copy()
    for k, v in columns.items():
        rows[k] = v[bad]
    atomic_write(where / "rows.csv", rows.to_csv(index_label="index").encode())
    atomic_write(where / "model.onnx", model)
    return where
