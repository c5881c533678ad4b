"""Every JSON payload the device publishes, with its ``schema`` version. Stdlib only.

Timestamps are ISO 8601 UTC with milliseconds (``2026-11-28T17:00:00.123Z``). NaN and
infinities become ``null`` (strict JSON).

``$state`` (plain text, retained): ``init`` | ``ready`` | ``disconnected`` | ``lost``.

Version history: ``edgeml.info/2`` adds ``reference``; ``edgeml.metrics/2`` adds, per
window, ``predictions.by_class`` and ``predictions.confidence`` (classification),
``predictions.scores`` (anomaly), ``features.<categorical>.known``, and bins numeric
features on the reference's open quantile bins (:mod:`edgeml.runtime.features`).

``edgeml.info/2`` (``$info``, retained)::

    {"schema", "device", "fleet", "session", "started_at",
     "model": {"name", "version", "task", "created_at", "sha256" (of model.onnx), "bundle",
               "inputs": [names], "classes"},
     "target": {"name", "arch"}, "platform": {"arch", "system", "python", "onnxruntime",
     "paho_mqtt", "edgeml"}, "mqtt": {"protocol": "5"|"3.1.1", "client_id", "broker"},
     "http": url|null, "telemetry": {"metrics_interval", "sample_rate", "sample_max_per_minute"},
     "topics": {role: topic},
     "reference": {"task", "inputs": [names, in order], "profile": the manifest's
                   reference_profile, "metrics": the manifest's metrics,
                   "categories": {name: [categories in "known" order]}, "classes"}}

The ``reference`` lets a fleet monitor judge drift and decay without the bundle file.

``edgeml.metrics/2`` (``metrics``)::

    {"schema", "device", "fleet", "session", "seq" (+1 per message, persisted across
     restarts: a gap means a lost window), "model": {"name", "version", "target", "sha256"},
     "window": {"start", "end", "seconds"},
     ...RuntimeStats.window(): "requests": {"total", "by_endpoint"}, "errors": {"total",
     "by_kind"}, "rows", "latency_ms": {"count", "mean", "p50", "p95", "p99", "max"},
     "predictions": {classification: "count", "counts", "frequencies", "by_class" (in
     model.classes order), "confidence": {"counts" (10 bins of max probability on [0, 1]),
     "count", "mean"} | regression: "count", "missing", "mean", "std", "min", "max",
     "counts", "below", "above", "out_of_range" | anomaly: "count", "anomalies",
     "anomaly_rate", "score_mean", "scores": {...as regression...}}, "features": {name: {...binned on the reference
     profile's edges, "missing", "out_of_range"...}},
     "process": {"rss_bytes", "cpu_percent"}, "system": {"temperature_c", "load1"},
     "spool": {"queued", "dropped_total"},
     "mqtt": {"connected", "connects", "rejected_publishes", "feedback_accepted",
              "feedback_rejected", "samples_captured_total", "samples_rate_limited_total"}}

MQTT inference is counted by RuntimeStats under the endpoint ``mqtt/infer``.

``edgeml.sample/1`` (``samples``)::

    {"schema", "id" (uuid4), "ts", "device", "fleet", "model": {"name", "version"},
     "features": {name: value}, "prediction": {...one row of the prediction...}}

``edgeml.feedback/1`` (``feedback``; the device received ``{"id", "label"}`` on ``feedback/set``)::

    {"schema", "id", "label", "ts" (when the label arrived), "sample_ts", "device", "fleet",
     "model": {"name", "version"}, "features", "prediction"}

``edgeml.alert/1`` (published by the fleet monitor on ``<base>/$alerts/<fleet>/<device>``)::

    {"schema", "id", "state": "open"|"resolved", "kind", "fleet", "device", "model":
     {"name", "version"}|null, "feature", "value", "threshold", "message", "opened_at",
     "resolved_at"}

``edgeml.infer.response/1`` (reply to an ``infer`` request)::

    {"schema", "status": "ok", "model": {"name", "version"}, "task", "predictions": [...],
     "classes"?, "correlation_id"?}
    {"schema", "status": "error", "error": "<message>", "correlation_id"?}
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from edgeml.runtime.sampling import SAMPLE_SCHEMA, iso_utc

__all__ = [
    "ALERT_SCHEMA",
    "FEEDBACK_SCHEMA",
    "INFER_RESPONSE_SCHEMA",
    "INFO_SCHEMA",
    "METRICS_SCHEMA",
    "SAMPLE_SCHEMA",
    "alert",
    "dumps",
    "feedback",
    "info",
    "metrics",
    "reference",
    "sample",
    "split_window",
]

INFO_SCHEMA = "edgeml.info/2"
METRICS_SCHEMA = "edgeml.metrics/2"
FEEDBACK_SCHEMA = "edgeml.feedback/1"
INFER_RESPONSE_SCHEMA = "edgeml.infer.response/1"
ALERT_SCHEMA = "edgeml.alert/1"


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalar
        return _clean(obj.item())
    if hasattr(obj, "tolist"):  # numpy array
        return _clean(obj.tolist())
    return obj


def dumps(obj: Any) -> bytes:
    """Compact, strict JSON (NaN/inf as null) as UTF-8 bytes."""
    return json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False).encode()


def model_ref(agent: Any) -> dict[str, Any]:
    m = agent.predictor.manifest
    return {"name": m.name, "version": m.version}


def _identity(agent: Any) -> dict[str, Any]:
    return {"device": agent.topics.device, "fleet": agent.topics.fleet}


def info(agent: Any, platform: dict[str, Any]) -> dict[str, Any]:
    from edgeml.bundle.manifest import MODEL
    from edgeml.runtime.mqtt_client import protocol_name

    m = agent.predictor.manifest
    bundle = getattr(agent.predictor, "bundle", None)
    return {
        "schema": INFO_SCHEMA,
        **_identity(agent),
        "session": agent.session,
        "started_at": agent.started_at,
        "model": {
            "name": m.name,
            "version": m.version,
            "task": m.task,
            "created_at": m.created_at,
            "sha256": getattr(agent.predictor, "sha256", None) or m.files.get(MODEL),
            "bundle": bundle.path.name if bundle is not None else m.filename,
            "inputs": [spec.name for spec in m.inputs],
            "classes": m.outputs.classes,
        },
        "target": {"name": m.target.name, "arch": m.target.arch},
        "platform": platform,
        "mqtt": {
            "protocol": protocol_name(agent.protocol) if agent.protocol else None,
            "client_id": agent.topics.client_id,
            "broker": agent.broker.display,
        },
        "http": agent.http_url,
        "telemetry": {
            "metrics_interval": agent.metrics_interval,
            "sample_rate": agent.sampler.rate,
            "sample_max_per_minute": agent.sampler.max_per_minute,
        },
        "topics": agent.topics.as_dict(),
        "reference": reference(m),
    }


def reference(manifest: Any) -> dict[str, Any]:
    """``$info.reference``: the reference profile, the holdout metrics, and per categorical
    input its categories in the order of the metrics window's ``known`` counts."""
    from edgeml.runtime.features import reference_categories

    features = manifest.reference_profile.get("features") or {}
    categories = {spec.name: reference_categories(spec, features.get(spec.name) or {})
                  for spec in manifest.inputs if spec.kind == "categorical"}
    return {"task": manifest.task, "inputs": [spec.name for spec in manifest.inputs],
            "profile": manifest.reference_profile, "metrics": _metrics_dict(manifest.metrics),
            "categories": categories, "classes": manifest.outputs.classes}


def _metrics_dict(metrics: Any) -> Any:
    """The manifest's holdout metrics as plain JSON (a dict, or a dataclass with to_dict)."""
    import dataclasses

    if hasattr(metrics, "to_dict"):
        return metrics.to_dict()
    if dataclasses.is_dataclass(metrics) and not isinstance(metrics, type):
        return dataclasses.asdict(metrics)
    return metrics


def split_window(window: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """RuntimeStats.window() -> (the rest, ``{"start", "end", "seconds"}``) for :func:`metrics`."""
    rest = dict(window)
    times = {"start": rest.pop("start", None), "end": rest.pop("end", None),
             "seconds": rest.pop("duration_s", None)}
    return rest, times


def metrics(
    agent: Any, seq: int, window: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "schema": METRICS_SCHEMA,
        **_identity(agent),
        "session": agent.session,
        "seq": seq,
        "model": model_ref(agent),
        **window,
        **extra,
    }


def sample(agent: Any, captured: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SAMPLE_SCHEMA,
        "id": captured["id"],
        "ts": captured["ts"],
        **_identity(agent),
        "model": model_ref(agent),
        "features": captured["features"],
        "prediction": captured["prediction"],
    }


def feedback(agent: Any, record: dict[str, Any], label: Any, ts: float | None = None) -> dict[str, Any]:
    return {
        "schema": FEEDBACK_SCHEMA,
        "id": record["id"],
        "label": label,
        "ts": iso_utc(time.time() if ts is None else ts),
        "sample_ts": record.get("ts"),
        **_identity(agent),
        "model": record.get("model") or model_ref(agent),
        "features": record.get("features"),
        "prediction": record.get("prediction"),
    }


def infer_ok(agent: Any, prediction: dict[str, Any]) -> dict[str, Any]:
    return {"schema": INFER_RESPONSE_SCHEMA, "status": "ok", "model": model_ref(agent), **prediction}


def infer_error(message: str) -> dict[str, Any]:
    return {"schema": INFER_RESPONSE_SCHEMA, "status": "error", "error": message}


def alert(*, alert_id: int, state: str, kind: str, fleet: str | None, device: str | None,
          model: str | None, version: int | None, feature: str | None, value: float | None,
          threshold: float | None, message: str, opened_at: float,
          resolved_at: float | None) -> dict[str, Any]:
    return {"schema": ALERT_SCHEMA, "id": alert_id, "state": state, "kind": kind, "fleet": fleet,
            "device": device, "model": {"name": model, "version": version} if model else None,
            "feature": feature, "value": value, "threshold": threshold, "message": message,
            "opened_at": iso_utc(opened_at),
            "resolved_at": iso_utc(resolved_at) if resolved_at is not None else None}
