"""Every JSON payload the device publishes, with its ``schema`` version. Stdlib only.

Timestamps are ISO 8601 UTC with milliseconds (``2026-11-28T17:00:00.123Z``). NaN and
infinities become ``null`` (strict JSON).

``$state`` (plain text, retained): ``init`` | ``ready`` | ``disconnected`` | ``lost``.

``edgeml.info/1`` (``$info``, retained)::

    {"schema", "device", "fleet", "session", "started_at",
     "model": {"name", "version", "task", "created_at", "sha256" (of model.onnx), "bundle",
               "inputs": [names], "classes"},
     "target": {"name", "arch"}, "platform": {"arch", "system", "python", "onnxruntime",
     "paho_mqtt", "edgeml"}, "mqtt": {"protocol": "5"|"3.1.1", "client_id", "broker"},
     "http": url|null, "telemetry": {"metrics_interval", "sample_rate", "sample_max_per_minute"},
     "topics": {role: topic}}

``edgeml.metrics/1`` (``metrics``)::

    {"schema", "device", "fleet", "session", "seq" (+1 per message, persisted across
     restarts: a gap means a lost window), "model": {"name", "version", "target", "sha256"},
     "window": {"start", "end", "seconds"},
     ...RuntimeStats.window(): "requests": {"total", "by_endpoint"}, "errors": {"total",
     "by_kind"}, "rows", "latency_ms": {"count", "mean", "p50", "p95", "p99", "max"},
     "predictions": {...per task...}, "features": {name: {...binned on the reference
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
    "FEEDBACK_SCHEMA",
    "INFER_RESPONSE_SCHEMA",
    "INFO_SCHEMA",
    "METRICS_SCHEMA",
    "SAMPLE_SCHEMA",
    "dumps",
    "feedback",
    "info",
    "metrics",
    "sample",
]

INFO_SCHEMA = "edgeml.info/1"
METRICS_SCHEMA = "edgeml.metrics/1"
FEEDBACK_SCHEMA = "edgeml.feedback/1"
INFER_RESPONSE_SCHEMA = "edgeml.infer.response/1"


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
    }


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


def feedback(agent: Any, record: dict[str, Any], label: Any) -> dict[str, Any]:
    return {
        "schema": FEEDBACK_SCHEMA,
        "id": record["id"],
        "label": label,
        "ts": iso_utc(time.time()),
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
