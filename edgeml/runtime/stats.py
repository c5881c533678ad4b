"""Runtime statistics: counters, latency, prediction and feature distributions (device-safe).

:class:`RuntimeStats` is updated once per request and read by two consumers:

- ``window(reset=True)``: a JSON-able snapshot of the current metrics window (the MQTT
  telemetry publishes one every N seconds); features are binned on the reference
  profile's ``bin_edges`` from the manifest so the host can compare them with training;
  predictions are summarised the way the reference profile summarises the holdout's
  (class counts in ``classes`` order and a max-probability histogram for classifiers,
  predictions or anomaly scores binned on the reference's edges).
- ``prometheus_text()``: cumulative counters and a latency histogram for ``GET /metrics``
  (text exposition format 0.0.4). Counters never go back: a window reset folds the window
  into the totals.

Recording is cheap: one lock, a few integer updates and an append. Feeds and predictions
wait in a pending list and are binned with numpy in one vectorized pass (``searchsorted``
per feature over the concatenated batches) when ``flush_rows`` rows have accumulated or a
snapshot is asked for. ``observers`` are called after each recorded prediction with
``(feeds, prediction, latency_s, source)``; an empty list costs one test.
"""

from __future__ import annotations

import bisect
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np

from edgeml.bundle.manifest import Manifest
from edgeml.runtime.features import NumericStats, make_feature_stats
from edgeml.runtime.prediction import ANOMALY, NORMAL, Prediction

__all__ = ["CONFIDENCE_BINS", "LATENCY_BUCKETS", "PROMETHEUS_CONTENT_TYPE", "Observer", "RuntimeStats"]

log = logging.getLogger(__name__)

Observer = Callable[[dict[str, np.ndarray], Prediction, float, str], None]

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CONFIDENCE_BINS = 10  # max-probability histogram on [0, 1] (edgeml.train.reference's too)


class _Window:
    """Everything that a window reset clears."""

    def __init__(self, stats: RuntimeStats) -> None:
        self.started = stats.clock()
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.lat_sum = 0.0
        self.lat_count = 0
        self.lat_max = 0.0
        self.reservoir: list[float] = []
        self.rows = 0
        self.features = make_feature_stats(stats.manifest, stats.max_categories)
        self.classes: dict[str, int] = {}
        self.pred = NumericStats("prediction", stats.prediction_edges,
                                 open_bins=stats.prediction_open)
        self.confidence = np.zeros(CONFIDENCE_BINS, dtype=np.int64)
        self.confidence_sum = 0.0


class RuntimeStats:
    """Thread-safe request, latency, prediction and feature statistics for one model."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        sha256: str = "",
        reservoir_size: int = 2048,
        flush_rows: int = 256,
        max_categories: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manifest = manifest
        self.clock = clock  # wall clock of window start/end (a simulator passes its own)
        self.sha256 = sha256 or manifest.files.get("model.onnx", "")
        self.reservoir_size = reservoir_size
        self.flush_rows = flush_rows
        self.max_categories = max_categories
        ref = manifest.reference_profile.get("prediction") or {}
        self.prediction_edges: list[float] | None = ref.get("bin_edges")
        self.prediction_open = ref.get("binning") == "quantile"
        self.observers: list[Observer] = []
        self._lock = threading.Lock()
        self._feature_names = [spec.name for spec in manifest.inputs]
        self._object = {spec.name: spec.dtype == "string" for spec in manifest.inputs}
        self._new_pending()
        self._pending_rows = 0
        self._numeric_prediction = manifest.task != "classification"
        self._w = _Window(self)
        self._started = time.time()
        # cumulative totals, folded in at each window reset
        self._t_requests: dict[str, int] = {}
        self._t_errors: dict[str, int] = {}
        self._t_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._t_lat_sum = 0.0
        self._t_lat_count = 0
        self._t_classes: dict[str, int] = {}
        self._t_rows = 0
        self._t_missing: dict[str, int] = {}
        self._t_out_of_range: dict[str, int] = {}

    @classmethod
    def for_predictor(cls, predictor: Any, **kwargs: Any) -> RuntimeStats:
        """Stats for a loaded :class:`~edgeml.runtime.predictor.Predictor`."""
        return cls(predictor.manifest, sha256=predictor.sha256, **kwargs)

    # -- recording (hot path) ------------------------------------------------------

    def record(
        self,
        endpoint: str,
        latency_s: float,
        feeds: dict[str, np.ndarray],
        prediction: Prediction,
        source: str = "http",
    ) -> None:
        """A successful prediction request: count it, time it, queue its data for binning."""
        n = len(prediction)
        with self._lock:
            w = self._w
            w.requests[endpoint] = w.requests.get(endpoint, 0) + 1
            w.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1
            w.lat_sum += latency_s
            w.lat_count += 1
            if latency_s > w.lat_max:
                w.lat_max = latency_s
            if len(w.reservoir) < self.reservoir_size:
                w.reservoir.append(latency_s)
            else:
                j = random.randrange(w.lat_count)
                if j < self.reservoir_size:
                    w.reservoir[j] = latency_s
            w.rows += n
            if n == 1:  # the common case: keep scalars, cheaper to gather than tiny arrays
                for name, _, scalars in self._pending:
                    part = feeds.get(name)
                    if part is not None:
                        scalars.append(part.item(0))
            else:
                for name, parts, _ in self._pending:
                    part = feeds.get(name)
                    if part is not None:
                        parts.append(part)
            if self._numeric_prediction:
                values = prediction.scores if prediction.task == "anomaly" else prediction.values
                if values is not None:
                    self._pending_pred.append(values)
            else:
                probs = prediction.probabilities
                if probs is not None:
                    self._pending_conf.append(probs)
            labels = prediction.labels
            if labels:
                counts = w.classes
                for label in labels:
                    counts[label] = counts.get(label, 0) + 1
            self._pending_rows += n
            if self._pending_rows >= self.flush_rows:
                self._flush()
        if self.observers:
            for observer in list(self.observers):
                try:
                    observer(feeds, prediction, latency_s, source)
                except Exception:
                    log.exception("stats observer %r failed", observer)

    def record_request(self, endpoint: str) -> None:
        """A request that is not a prediction (health, metadata, metrics)."""
        with self._lock:
            w = self._w
            w.requests[endpoint] = w.requests.get(endpoint, 0) + 1

    def record_error(self, endpoint: str, kind: str) -> None:
        """A request that failed; ``kind`` is a short fixed word (input, json, not_found...)."""
        with self._lock:
            w = self._w
            w.requests[endpoint] = w.requests.get(endpoint, 0) + 1
            w.errors[kind] = w.errors.get(kind, 0) + 1

    # -- binning ---------------------------------------------------------------------

    def _new_pending(self) -> None:
        # per feature: (name, arrays from batches, scalars from single rows)
        self._pending: list[tuple[str, list[np.ndarray], list[Any]]] = [
            (n, [], []) for n in self._feature_names]
        self._pending_pred: list[np.ndarray] = []
        self._pending_conf: list[np.ndarray] = []

    def _flush(self) -> None:
        """Bin the pending feature values and predictions (caller holds the lock)."""
        if not self._pending_rows:
            return
        pending, pred, conf = self._pending, self._pending_pred, self._pending_conf
        self._new_pending()
        self._pending_rows = 0
        features = self._w.features
        for name, parts, scalars in pending:
            if scalars:
                dtype = object if self._object[name] else np.float64
                parts.append(np.array(scalars, dtype=dtype))
            if parts:
                features[name].add(np.concatenate(parts, axis=None))
        if pred:
            self._w.pred.add(np.concatenate(pred, axis=None).astype(np.float64))
        if conf:
            top = np.concatenate([c.reshape(len(c), -1) for c in conf]).max(axis=1)
            top = np.clip(top.astype(np.float64), 0.0, 1.0)
            idx = np.minimum((top * CONFIDENCE_BINS).astype(np.int64), CONFIDENCE_BINS - 1)
            self._w.confidence += np.bincount(idx, minlength=CONFIDENCE_BINS)
            self._w.confidence_sum += float(top.sum())

    # -- reading ---------------------------------------------------------------------

    def window(self, reset: bool = True) -> dict[str, Any]:
        """A JSON-able snapshot of the current window; ``reset`` starts a new one."""
        with self._lock:
            self._flush()
            w = self._w
            now = self.clock()
            snap = {
                "model": self.model_info(),
                "start": _iso(w.started),
                "end": _iso(now),
                "duration_s": round(now - w.started, 3),
                "requests": {"total": sum(w.requests.values()), "by_endpoint": dict(w.requests)},
                "errors": {"total": sum(w.errors.values()), "by_kind": dict(w.errors)},
                "rows": w.rows,
                "latency_ms": _latency(w),
                "predictions": self._prediction_snapshot(w),
                "features": {name: acc.snapshot() for name, acc in w.features.items()},
            }
            if reset:
                self._fold(w)
                self._w = _Window(self)
        return snap

    def _prediction_snapshot(self, w: _Window) -> dict[str, Any]:
        task = self.manifest.task
        if task == "classification":
            total = sum(w.classes.values())
            classes = self.manifest.outputs.classes or []
            conf = int(w.confidence.sum())
            return {"kind": task, "count": total, "counts": dict(w.classes),
                    "frequencies": {c: n / total for c, n in w.classes.items()} if total else {},
                    "by_class": [w.classes.get(c, 0) for c in classes],
                    "confidence": {"counts": w.confidence.tolist(), "count": conf,
                                   "mean": w.confidence_sum / conf if conf else None}}
        if task == "regression":
            return {"kind": task, **w.pred.snapshot(kind=False)}
        total = sum(w.classes.values())
        anomalies = w.classes.get(ANOMALY, 0)
        return {"kind": task, "count": total, "anomalies": anomalies,
                "anomaly_rate": anomalies / total if total else None,
                "score_mean": w.pred.mean(), "scores": w.pred.snapshot(kind=False)}

    def _fold(self, w: _Window) -> None:
        for src, dst in ((w.requests, self._t_requests), (w.errors, self._t_errors),
                         (w.classes, self._t_classes)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        self._t_buckets = [a + b for a, b in zip(self._t_buckets, w.buckets, strict=False)]
        self._t_lat_sum += w.lat_sum
        self._t_lat_count += w.lat_count
        self._t_rows += w.rows
        for name, acc in w.features.items():
            self._t_missing[name] = self._t_missing.get(name, 0) + acc.missing
            self._t_out_of_range[name] = self._t_out_of_range.get(name, 0) + acc.out_of_range

    def model_info(self) -> dict[str, Any]:
        m = self.manifest
        return {"name": m.name, "version": m.version, "target": m.target.name, "sha256": self.sha256}

    def prometheus_text(self) -> str:
        """Cumulative metrics in the Prometheus text exposition format 0.0.4."""
        with self._lock:
            self._flush()
            w = self._w
            requests = _merge(self._t_requests, w.requests)
            errors = _merge(self._t_errors, w.errors)
            classes = _merge(self._t_classes, w.classes)
            buckets = [a + b for a, b in zip(self._t_buckets, w.buckets, strict=False)]
            lat_sum, lat_count = self._t_lat_sum + w.lat_sum, self._t_lat_count + w.lat_count
            missing = {n: self._t_missing.get(n, 0) + a.missing for n, a in w.features.items()}
            out_of_range = {n: self._t_out_of_range.get(n, 0) + a.out_of_range
                            for n, a in w.features.items()}
            rows = self._t_rows + w.rows
        out: list[str] = []
        info = {k: str(v) for k, v in self.model_info().items()}
        _family(out, "edgeml_model_info", "gauge", "The model being served.", [(info, 1)])
        _family(out, "edgeml_start_time_seconds", "gauge", "Unix time the runtime started.",
                [({}, self._started)])
        _family(out, "edgeml_requests_total", "counter", "HTTP and MQTT requests, by endpoint.",
                [({"endpoint": k}, v) for k, v in sorted(requests.items())])
        _family(out, "edgeml_errors_total", "counter", "Failed requests, by kind.",
                [({"kind": k}, v) for k, v in sorted(errors.items())])
        if self.manifest.task == "regression":
            samples: list[tuple[dict[str, str], float]] = [({}, rows)]
        else:
            known = self.manifest.outputs.classes or []
            if self.manifest.task == "anomaly":
                known = [NORMAL, ANOMALY]
            samples = [({"class": c}, classes.get(c, 0)) for c in known]
            samples += [({"class": c}, v) for c, v in sorted(classes.items()) if c not in known]
        _family(out, "edgeml_predictions_total", "counter", "Predicted rows, by class.", samples)
        _family(out, "edgeml_feature_missing_total", "counter",
                "Missing feature values received.", [({"feature": k}, v) for k, v in missing.items()])
        _family(out, "edgeml_feature_out_of_range_total", "counter",
                "Feature values outside the training range (reference profile bins).",
                [({"feature": k}, v) for k, v in out_of_range.items()])
        name = "edgeml_request_latency_seconds"
        out.append(f"# HELP {name} Prediction request latency (parse, validate, run, encode).")
        out.append(f"# TYPE {name} histogram")
        cumulative = 0
        for le, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=False):
            cumulative += count
            out.append(f'{name}_bucket{{le="{_num(le)}"}} {cumulative}')
        out.append(f"{name}_sum {_num(lat_sum)}")
        out.append(f"{name}_count {lat_count}")
        return "\n".join(out) + "\n"


def _merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def _latency(w: _Window) -> dict[str, Any]:
    if not w.lat_count:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(np.asarray(w.reservoir), [50, 95, 99]).tolist()
    ms = 1000.0
    return {"count": w.lat_count, "mean": w.lat_sum / w.lat_count * ms, "p50": p50 * ms,
            "p95": p95 * ms, "p99": p99 * ms, "max": w.lat_max * ms}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v)) if abs(v) < 1e15 else repr(float(v))
    return repr(float(v))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(out: list[str], name: str, kind: str, help_text: str,
            samples: list[tuple[dict[str, str], float]]) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        if labels:
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {_num(value)}")
        else:
            out.append(f"{name} {_num(value)}")



