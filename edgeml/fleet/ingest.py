"""From one MQTT message to the row it becomes, or to the reason it is quarantined.

Pure functions, no database and no MQTT client: :func:`classify` takes the topic, the
payload bytes and the ``session`` user property and returns a :class:`Parsed` (a row for
one table) or a :class:`Rejected` (reason, detail). Schema names come from
:mod:`edgeml.runtime.payloads` (this monitor accepts every version up to the device's
current one); topics are parsed by :mod:`edgeml.runtime.topics`.

Quarantine reasons: ``too-large``, ``not-json``, ``not-object``, ``missing-field``,
``wrong-type``, ``unknown-schema``, ``topic-mismatch``, ``bad-state``, ``unknown-topic``
(and ``db-rejected``, given by the writer when the database refuses a row alone).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from edgeml.fleet.checks import (
    _INT32,
    _INT64,
    _MAX_ID,
    _MAX_NAME,
    FEEDBACK,
    INFO,
    METRICS,
    SAMPLES,
    _Bad,
    _d,
    _f,
    _get,
    _i,
    _identity,
    _int,
    _model,
    _num,
    _Odd,
    _section,
    _show,
    accepted_schemas,
    parse_time,
)
from edgeml.fleet.db import Raw
from edgeml.fleet.layout import pack_window
from edgeml.runtime import topics

__all__ = ["REASONS", "Parsed", "Raw", "Rejected", "accepted_schemas", "classify", "parse_time"]

REASONS = ("too-large", "not-json", "not-object", "missing-field", "wrong-type",
           "unknown-schema", "topic-mismatch", "bad-state", "unknown-topic", "db-rejected")
DEFAULT_MAX_PAYLOAD = 256 * 1024

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _stdlib_loads(data: bytes) -> Any:
    return json.loads(data, parse_constant=_reject_constant)


_loads: Callable[[bytes], Any]
try:  # the fleet extra's decoder: ~10x json.loads, and strict (no NaN, no Infinity)
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - a host without the fleet extra's orjson
    _loads = _stdlib_loads




@dataclass(frozen=True)
class Parsed:
    """A message ready to store: ``kind`` is the leaf (metrics, samples, feedback, $state, $info)."""

    kind: str
    fleet: str
    device: str
    row: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


def _metrics(obj: dict[str, Any], fleet: str, device: str, text: str,
             now: datetime) -> dict[str, Any]:
    _identity(obj, fleet, device, METRICS)
    session = _get(obj, "session", int, "session")
    seq = _get(obj, "seq", int, "seq")
    if session < 0 or seq < 0:
        raise _Bad("wrong-type", "session and seq must be >= 0")
    name, version = _model(obj, required=False)
    window = _section(obj, "window")
    latency = _section(obj, "latency_ms")
    process = _section(obj, "process")
    system = _section(obj, "system")
    spool = _section(obj, "spool")
    requests = _section(obj, "requests")
    errors = _section(obj, "errors")
    rows = _int(obj, "rows", "rows", _INT32)
    return {
        "fleet": fleet, "device": device, "session": session, "seq": seq,
        "model_name": name, "model_version": version,
        "window_start": parse_time(window.get("start"), "window.start", required=False),
        "window_end": parse_time(window.get("end"), "window.end"),
        "seconds": _num(window, "seconds", "window.seconds"),
        "requests": _int(requests, "total", "requests.total", _INT32) or 0,
        "errors": _int(errors, "total", "errors.total", _INT32) or 0,
        "rows": rows or 0,
        "latency_mean_ms": _num(latency, "mean", "latency_ms.mean"),
        "p50_ms": _num(latency, "p50", "latency_ms.p50"),
        "p95_ms": _num(latency, "p95", "latency_ms.p95"),
        "p99_ms": _num(latency, "p99", "latency_ms.p99"),
        "latency_max_ms": _num(latency, "max", "latency_ms.max"),
        "rss_bytes": _int(process, "rss_bytes", "process.rss_bytes"),
        "cpu_percent": _num(process, "cpu_percent", "process.cpu_percent"),
        "temperature_c": _num(system, "temperature_c", "system.temperature_c"),
        "load1": _num(system, "load1", "system.load1"),
        "spool_queued": _int(spool, "queued", "spool.queued", _INT32),
        "spool_dropped_total": _int(spool, "dropped_total", "spool.dropped_total"),
        "received_at": now,
        "payload": Raw(text),
        "bins": _packed(obj),
    }


def _fast_metrics(obj: dict[str, Any], fleet: str, device: str, text: str,
                  now: datetime) -> dict[str, Any]:
    """:func:`_metrics` for a well-formed window: exact type checks, one pass.

    Raises :class:`_Odd` (or :class:`_Bad`) on anything unusual; the caller then runs the
    checked path, which gives the quarantine reason. Both return the same row.
    """
    schema = obj.get("schema")
    if type(schema) is not str or schema not in METRICS:
        raise _Odd
    value = obj.get("fleet")
    if value is not None and value != fleet:
        raise _Odd
    value = obj.get("device")
    if value is not None and value != device:
        raise _Odd
    session, seq = obj.get("session"), obj.get("seq")
    if (type(session) is not int or type(seq) is not int
            or not 0 <= session < _INT64 or not 0 <= seq < _INT64):
        raise _Odd
    model = obj.get("model")
    name = version = None
    if model is not None:
        if type(model) is not dict:
            raise _Odd
        name, version = model.get("name"), model.get("version")
        if name is not None and (type(name) is not str or len(name) > _MAX_NAME):
            raise _Odd
        if version is not None and (type(version) is not int or not 0 <= version < _INT32):
            raise _Odd
    window = _d(obj, "window")
    latency = _d(obj, "latency_ms")
    process = _d(obj, "process")
    system = _d(obj, "system")
    spool = _d(obj, "spool")
    start = window.get("start")
    return {
        "fleet": fleet, "device": device, "session": session, "seq": seq,
        "model_name": name, "model_version": version,
        "window_start": None if start is None else parse_time(start, "window.start"),
        "window_end": parse_time(window.get("end"), "window.end"),
        "seconds": _f(window, "seconds"),
        "requests": _i(_d(obj, "requests"), "total", _INT32) or 0,
        "errors": _i(_d(obj, "errors"), "total", _INT32) or 0,
        "rows": _i(obj, "rows", _INT32) or 0,
        "latency_mean_ms": _f(latency, "mean"),
        "p50_ms": _f(latency, "p50"),
        "p95_ms": _f(latency, "p95"),
        "p99_ms": _f(latency, "p99"),
        "latency_max_ms": _f(latency, "max"),
        "rss_bytes": _i(process, "rss_bytes"),
        "cpu_percent": _f(process, "cpu_percent"),
        "temperature_c": _f(system, "temperature_c"),
        "load1": _f(system, "load1"),
        "spool_queued": _i(spool, "queued", _INT32),
        "spool_dropped_total": _i(spool, "dropped_total"),
        "received_at": now,
        "payload": Raw(text),
        "bins": _packed(obj),
    }


def _packed(obj: dict[str, Any]) -> bytes | None:
    """The window's counts packed for the drift evaluator (it packs lazily when None)."""
    try:
        return pack_window(obj)
    except Exception:  # an odd window is still stored; drift re-packs it from the payload
        return None


def _record(obj: dict[str, Any], fleet: str, device: str, schemas: frozenset[str],
            now: datetime) -> dict[str, Any]:
    _identity(obj, fleet, device, schemas)
    sample_id = _get(obj, "id", str, "id")
    if not 0 < len(sample_id) <= _MAX_ID:
        raise _Bad("wrong-type", f"id must be 1-{_MAX_ID} characters")
    name, version = _model(obj, required=False)
    features = _get(obj, "features", dict, "features", required=False)
    prediction = _get(obj, "prediction", dict, "prediction", required=False)
    return {"id": sample_id, "fleet": fleet, "device": device, "model_name": name,
            "model_version": version, "ts": parse_time(obj.get("ts"), "ts", required=False),
            "features": features, "prediction": prediction, "received_at": now}


def _feedback(obj: dict[str, Any], fleet: str, device: str, now: datetime) -> dict[str, Any]:
    row = _record(obj, fleet, device, FEEDBACK, now)
    if obj.get("label") is None:
        raise _Bad("missing-field", "label is missing")
    label = obj["label"]
    if not isinstance(label, (str, int, float)):
        raise _Bad("wrong-type", f"label must be a string or a number: {_show(label)}")
    row["label"] = label
    row["sample_ts"] = parse_time(obj.get("sample_ts"), "sample_ts", required=False)
    return row


def _info(obj: dict[str, Any], fleet: str, device: str, text: str,
          now: datetime) -> dict[str, Any]:
    _identity(obj, fleet, device, INFO)
    session = _get(obj, "session", int, "session")
    name, version = _model(obj, required=True)
    model = obj["model"]
    task = model.get("task") if isinstance(model.get("task"), str) else None
    sha = model.get("sha256") if isinstance(model.get("sha256"), str) else None
    created = model.get("created_at") if isinstance(model.get("created_at"), str) else None
    classes = model.get("classes") if isinstance(model.get("classes"), list) else None
    reference = obj.get("reference") if isinstance(obj.get("reference"), dict) else None
    return {"fleet": fleet, "device": device, "session": session,
            "started_at": parse_time(obj.get("started_at"), "started_at", required=False),
            "model_name": name, "model_version": version, "task": task,
            "sha256": sha[:64] if sha else None, "created_at": created[:40] if created else None,
            "classes": classes, "reference": reference, "info": Raw(text), "now": now}


def _state(payload: bytes, session: str | None, fleet: str, device: str,
           now: datetime) -> dict[str, Any]:
    try:
        state = payload.decode("ascii")
    except UnicodeDecodeError:
        raise _Bad("bad-state", "$state is not ASCII text") from None
    if state not in topics.STATES:
        raise _Bad("bad-state", f"$state {_show(state)} is not one of {list(topics.STATES)}")
    number: int | None = None
    if session is not None:
        try:
            number = int(session)
        except ValueError:
            raise _Bad("wrong-type", f"session property {_show(session)} is not an integer") \
                from None
    return {"fleet": fleet, "device": device, "state": state, "state_session": number,
            "now": now}


def classify(base: str, topic: str, payload: bytes, session: str | None = None, *,
             max_payload: int = DEFAULT_MAX_PAYLOAD, now: datetime | None = None,
             ) -> Parsed | Rejected | None:
    """The row a message becomes, why it cannot be stored, or None (an empty retained clear)."""
    now = now or datetime.now(timezone.utc)
    where = topics.parse_topic(base, topic)
    if where is None:
        return Rejected("unknown-topic", "not an edgeml device topic")
    fleet, device, leaf = where
    if len(payload) > max_payload:
        return Rejected("too-large", f"{len(payload)} bytes > {max_payload}")
    if leaf in (topics.STATE, topics.INFO) and not payload:
        return None  # a retained message being cleared
    try:
        if leaf == topics.STATE:
            return Parsed(leaf, fleet, device, _state(payload, session, fleet, device, now))
        try:
            text = payload.decode("utf-8")
            obj = _loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return Rejected("not-json", str(exc)[:200])
        if not isinstance(obj, dict):
            return Rejected("not-object", f"a JSON {type(obj).__name__}, not an object")
        if leaf == topics.METRICS:
            try:
                row = _fast_metrics(obj, fleet, device, text, now)
            except (_Odd, _Bad):
                row = _metrics(obj, fleet, device, text, now)
            return Parsed(leaf, fleet, device, row)
        if leaf == topics.SAMPLES:
            return Parsed(leaf, fleet, device, _record(obj, fleet, device, SAMPLES, now))
        if leaf == topics.FEEDBACK:
            return Parsed(leaf, fleet, device, _feedback(obj, fleet, device, now))
        if leaf == topics.INFO:
            return Parsed(leaf, fleet, device, _info(obj, fleet, device, text, now))
    except _Bad as exc:
        return Rejected(exc.reason, exc.detail)
    return Rejected("unknown-topic", f"the monitor does not store {leaf!r}")
