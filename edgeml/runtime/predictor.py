"""Loading a bundle and predicting with it (device-safe: stdlib, numpy, onnxruntime).

:class:`Predictor` opens a bundle, checks it (checksums of every member; the signature
when a public key is given), loads ``model.onnx`` into one onnxruntime session with the
threads the manifest asks for (``runtime.intra_op_threads``, 1 by default; spinning off
above 1, see :mod:`edgeml.bundle.session`), and precomputes everything the hot path
needs: input order, output names, the class array. ``predict`` takes rows
(``[{feature: value}, ...]``) or columns (``{feature: [values]}``), validates them against
the manifest's input schema
(:func:`edgeml.bundle.feeds.to_feeds` semantics: an :class:`~edgeml.errors.InputError`
names the feature and row) and returns a :class:`~edgeml.runtime.prediction.Prediction`.

Well-formed requests (plain ints/floats and strings, nothing missing) take a vectorized
fast path that builds the feeds in a few numpy calls; anything else goes through
``to_feeds``, which produces the exact error message. Both reject non-finite numbers and
numbers outside float32 range (``inf`` would only poison the preprocessing).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.bundle.derive import request_inputs, resolve_timezone
from edgeml.bundle.feeds import rows_to_columns, to_feeds
from edgeml.bundle.manifest import MODEL, Manifest
from edgeml.bundle.reader import Bundle, open_bundle
from edgeml.bundle.session import bundle_session
from edgeml.errors import BundleError, InputError, RuntimeServiceError
from edgeml.runtime.prediction import Decoder, Prediction

__all__ = ["OutputTensor", "Predictor"]

log = logging.getLogger(__name__)

_NUM_TYPES = frozenset((float, int))
_STR_TYPES = frozenset((str,))
_NONE_TYPE = frozenset((type(None),))
_NAN = math.nan
_F32_MAX = float(np.finfo(np.float32).max)
_FEW = 4  # up to this many features of a kind, batch-1 feeds are built one array each
_ORT_TO_OIP = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(string)": "BYTES",
    "tensor(bool)": "BOOL",
}
_DTYPE_TO_OIP = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "string": "BYTES"}
_ORT_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int64": "tensor(int64)",
              "string": "tensor(string)"}


@dataclass(frozen=True)
class OutputTensor:
    """One model output as the Open Inference Protocol shows it."""

    name: str  # ONNX output name
    role: str  # label | probabilities | prediction | score
    datatype: str  # OIP datatype: BYTES, FP32, INT64...
    shape: list[int]  # -1 for the batch dimension


class Predictor:
    """A loaded, verified bundle ready to predict. Thread-safe (one shared ORT session)."""

    def __init__(
        self,
        bundle: str | Path,
        *,
        public_key: Path | None = None,
        intra_op_threads: int | None = None,
        verify: bool = True,
    ) -> None:
        self.bundle: Bundle = open_bundle(bundle)
        self.manifest: Manifest = self.bundle.manifest
        m = self.manifest
        if verify or public_key is not None:
            _verify(self.bundle, public_key)
        model = self.bundle.read(MODEL)
        self.sha256 = hashlib.sha256(model).hexdigest()
        if self.sha256 != m.files.get(MODEL):
            raise BundleError(f"{self.bundle.path.name}: {MODEL}: sha256 does not match the manifest")
        # threads: what packaging measured for this model (manifest.runtime, default 1)
        self.intra_op_threads = m.runtime.intra_op_threads if intra_op_threads is None \
            else intra_op_threads
        self.session = bundle_session(model, threads=self.intra_op_threads,
                                      inter_op_threads=m.runtime.inter_op_threads)
        del model
        # The public InferenceSession.run re-validates the feed names on every call; the
        # feeds are built here from the manifest, so call the binding directly when present.
        self._run = getattr(self.session, "_sess", self.session).run
        self._prepare()
        self._warm_up()

    # -- load-time preparation ----------------------------------------------

    def _prepare(self) -> None:
        m = self.manifest
        have = {i.name: i.type for i in self.session.get_inputs()}
        for spec in m.inputs:
            if spec.name not in have:
                raise BundleError(f"{MODEL}: has no input {spec.name!r} (the manifest lists it)")
            if _ORT_TYPES.get(spec.dtype) != have[spec.name]:
                raise BundleError(
                    f"{MODEL}: input {spec.name!r} is {have[spec.name]}, the manifest says {spec.dtype}"
                )
        self.inputs = list(m.inputs)
        self.derived = list(m.derived)  # raw timestamps -> derived inputs, before the graph
        for d in self.derived:
            resolve_timezone(d.timezone)  # BundleError now if the device has no such zone
        self.request_inputs = request_inputs(self.inputs, self.derived)  # what requests carry
        self.task = m.task
        self._keyset = frozenset(s.name for s in m.inputs)
        self._num_names = [s.name for s in m.inputs if s.dtype != "string"]
        self._str_names = [s.name for s in m.inputs if s.dtype == "string"]
        self._fast = not self.derived and all(
            s.dtype == "float32" for s in m.inputs if s.dtype != "string")
        self._str_strict = any(not s.nullable for s in m.inputs if s.dtype == "string")
        self._num_specs = [(s.name, s.nullable) for s in m.inputs if s.dtype != "string"]
        self._str_specs = [(s.name, s.nullable) for s in m.inputs if s.dtype == "string"]
        self._num_nullable = all(nullable for _, nullable in self._num_specs)
        self._str_nullable = all(nullable for _, nullable in self._str_specs)
        self._num_few = len(self._num_names) <= _FEW
        self._str_few = len(self._str_names) <= _FEW

        out = m.outputs
        ort_outputs = {o.name: o for o in self.session.get_outputs()}
        roles = [("label", out.label), ("probabilities", out.probabilities),
                 ("prediction", out.prediction), ("score", out.score)]
        self.output_tensors: list[OutputTensor] = []
        for role, name in roles:
            if name is None:
                continue
            if name not in ort_outputs:
                raise BundleError(f"{MODEL}: has no output {name!r} (manifest outputs.{role})")
            meta = ort_outputs[name]
            shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (meta.shape or [-1])]
            shape[0] = -1
            datatype = _ORT_TO_OIP.get(meta.type, "BYTES")
            if role == "label" and self.task == "classification":
                datatype = "BYTES"  # class names
            self.output_tensors.append(OutputTensor(name, role, datatype, shape))
        self._out_names = [t.name for t in self.output_tensors]
        self.classes: list[str] | None = list(out.classes) if out.classes else None
        label_map: dict[Any, str] = {}
        for c in self.classes or []:
            for convert in (int, float):
                try:
                    label_map.setdefault(convert(c), c)
                    break
                except ValueError:
                    continue
        self.decoder = Decoder(
            task=self.task,
            names=tuple(self._out_names),
            roles=tuple(t.role for t in self.output_tensors),
            classes=self.classes,
            label_map=label_map,
        )

    def _warm_up(self) -> None:
        """One run on a neutral row so the first request does not pay for allocations."""
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            if spec.dtype == "string":
                feeds[spec.name] = np.array([[(spec.categories or ["x"])[0]]], dtype=object)
            else:
                value = spec.min if spec.min is not None and math.isfinite(spec.min) else 0.0
                feeds[spec.name] = np.full((1, 1), value, dtype=spec.dtype)
        try:
            self._run(self._out_names, feeds, None)
        except Exception as exc:  # a model that cannot run at all fails later with a clear error
            log.warning("warm-up run failed: %s", exc)

    # -- feeds ------------------------------------------------------------------

    def feeds(self, data: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validated ONNX feeds for rows (list of dicts) or columns (dict of lists)."""
        if type(data) is list:
            fast = self._fast_rows(data)
            if fast is not None:
                return fast
            return self._checked(rows_to_columns(data))
        if isinstance(data, Mapping):
            fast = self._fast_columns(data) if type(data) is dict else None
            if fast is not None:
                return fast
            return self._checked(data)
        return self._checked(rows_to_columns(data))  # raises InputError for non-sequences

    def _fast_rows(self, rows: list[Any]) -> dict[str, np.ndarray] | None:
        n = len(rows)
        if not self._fast or n == 0:
            return None
        keys = self._keyset
        feeds: dict[str, np.ndarray] = {}
        if n == 1:
            row = rows[0]
            if type(row) is not dict or row.keys() != keys:
                return None
            # Few features of a kind: one small array each is cheaper than one array in views.
            if self._num_few:
                for name, nullable in self._num_specs:
                    v = row[name]
                    t = type(v)
                    if t is float or t is int:
                        if not -_F32_MAX <= v <= _F32_MAX and (v == v or not nullable):
                            return None  # out of float32 range, or NaN where not allowed
                    elif v is None and nullable:
                        v = _NAN
                    else:
                        return None
                    feeds[name] = np.array([[v]], dtype=np.float32)
            elif not self._numeric([row[k] for k in self._num_names], 1, feeds):
                return None
            if self._str_few:
                for name, nullable in self._str_specs:
                    v = row[name]
                    if type(v) is str:
                        if not v and not nullable:
                            return None
                    elif v is None and nullable:
                        v = ""
                    else:
                        return None
                    feeds[name] = np.array([[v]], dtype=object)
            elif not self._strings([row[k] for k in self._str_names], 1, feeds):
                return None
            return feeds
        for row in rows:
            if type(row) is not dict or row.keys() != keys:
                return None
        if self._num_names and not self._numeric(
                [row[k] for k in self._num_names for row in rows], n, feeds):
            return None
        if self._str_names and not self._strings(
                [row[k] for k in self._str_names for row in rows], n, feeds):
            return None
        return feeds

    def _fast_columns(self, columns: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        if not self._fast or columns.keys() != self._keyset:
            return None
        n = -1
        nv: list[Any] = []
        sv: list[Any] = []
        for names, flat in ((self._num_names, nv), (self._str_names, sv)):
            for name in names:
                col = columns[name]
                if type(col) is not list:
                    return None
                if n < 0:
                    n = len(col)
                elif len(col) != n:
                    return None
                flat += col
        if n <= 0:
            return None
        feeds: dict[str, np.ndarray] = {}
        if nv and not self._numeric(nv, n, feeds):
            return None
        if sv and not self._strings(sv, n, feeds):
            return None
        return feeds

    def _numeric(self, nv: list[Any], n: int, feeds: dict[str, np.ndarray]) -> bool:
        """Add float32 feeds from feature-major values; False to take the checked path."""
        types = set(map(type, nv))
        if not _NUM_TYPES.issuperset(types):
            if types - _NUM_TYPES != _NONE_TYPE or not self._num_nullable:
                return False
            nv = [_NAN if v is None else v for v in nv]
        try:
            total = sum(nv)  # NaN anywhere makes it NaN; ints past float range raise
            if total == total:
                if not (min(nv) >= -_F32_MAX and max(nv) <= _F32_MAX):
                    return False
                array = np.array(nv, dtype=np.float32)
            else:  # missing values: allowed only if every numeric feature is nullable
                if not self._num_nullable:
                    return False
                wide = np.array(nv, dtype=np.float64)
                if (np.abs(wide) > _F32_MAX).any():  # NaN compares False
                    return False
                array = wide.astype(np.float32)
        except OverflowError:
            return False
        feeds.update(zip(self._num_names, array.reshape(-1, n, 1), strict=True))
        return True

    def _strings(self, sv: list[Any], n: int, feeds: dict[str, np.ndarray]) -> bool:
        """Add string feeds from feature-major values; False to take the checked path."""
        types = set(map(type, sv))
        if not _STR_TYPES.issuperset(types):
            if types - _STR_TYPES != _NONE_TYPE or not self._str_nullable:
                return False
            sv = ["" if v is None else v for v in sv]
        if self._str_strict and "" in sv:
            return False
        feeds.update(zip(self._str_names, np.array(sv, dtype=object).reshape(-1, n, 1),
                         strict=True))
        return True

    def _checked(self, columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The reference path: ``to_feeds`` plus the finiteness rules it does not enforce."""
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                feeds = to_feeds(self.inputs, columns, self.derived)
        except (OverflowError, ValueError, TypeError) as exc:
            raise InputError(_overflow_message(self._num_names, columns, exc)) from exc
        for name in self._num_names:
            arr = feeds[name]
            if arr.dtype.kind == "f":
                bad = np.isinf(arr)
                if bad.any():
                    row = int(np.argmax(bad.reshape(-1)))
                    raise InputError(
                        f"feature {name!r} row {row}: number is infinite or outside float32 range"
                    )
        return feeds

    # -- predicting ---------------------------------------------------------------

    def predict(self, data: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> Prediction:
        """Validate ``data`` (rows or columns) and run the model."""
        return self.run(self.feeds(data))

    def run(self, feeds: dict[str, np.ndarray]) -> Prediction:
        """Run the model on feeds from :meth:`feeds` and interpret its outputs."""
        try:
            results = self._run(self._out_names, feeds, None)
        except Exception as exc:  # onnxruntime has its own exception classes
            text = str(exc).strip().splitlines()
            detail = text[0] if text else type(exc).__name__
            if type(exc).__name__ == "InvalidArgument":
                raise InputError(f"the model rejected the input: {detail}") from exc
            raise RuntimeServiceError(f"onnxruntime failed: {detail}") from exc
        return Prediction(self.decoder, results)

    # -- description --------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Identity of the loaded model: name, version, target, task, sha256 of model.onnx."""
        m = self.manifest
        return {"name": m.name, "version": m.version, "target": m.target.name,
                "task": m.task, "sha256": self.sha256}

    def metadata(self) -> dict[str, Any]:
        """Open Inference Protocol model metadata (``GET /v2/models/{name}``)."""
        m = self.manifest
        return {
            "name": m.name,
            "versions": [str(m.version)],
            "platform": "onnxruntime_onnx",  # as Triton names it
            "inputs": [
                {"name": s.name, "datatype": _DTYPE_TO_OIP[s.dtype], "shape": [-1, 1]}
                for s in self.request_inputs  # a derived input's raw timestamp: BYTES
            ],
            "outputs": [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                for t in self.output_tensors
            ],
            "parameters": {"task": m.task, "target": m.target.name},
        }


def _verify(bundle: Bundle, public_key: Path | None) -> None:
    """Checksums of every member always; the signature when a key is given."""
    from edgeml.bundle.verify import verify_bundle

    verify_bundle(bundle.path, public_key=public_key, run_selftest=False)


def _overflow_message(numeric: list[str], columns: Mapping[str, Any], exc: Exception) -> str:
    for name in numeric:
        values = columns.get(name) if isinstance(columns, Mapping) else None
        if isinstance(values, (list, tuple)):
            for row, v in enumerate(values):
                if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _F32_MAX:
                    return f"feature {name!r} row {row}: number is outside float32 range"
    return f"invalid feature values: {exc}"
