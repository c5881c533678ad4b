"""Validation primitives of :mod:`edgeml.fleet.ingest`: typed getters and their errors.

Two kinds: the checked getters (``_get``, ``_num``, ``_int``, ``_section``, ``_model``,
``_identity``) raise :class:`_Bad` with the quarantine reason and a detail; the fast
getters (``_f``, ``_i``, ``_d``) accept only exact JSON types and raise :class:`_Odd` on
anything else, leaving the decision (and the reason) to the checked ones.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from edgeml.runtime import payloads

__all__ = ["FEEDBACK", "INFO", "METRICS", "SAMPLES", "accepted_schemas", "parse_time"]

_MAX_NAME = 128
_MAX_ID = 64
_INT32 = 2**31
_INT64 = 2**63


def accepted_schemas(current: str) -> frozenset[str]:
    """``edgeml.metrics/2`` -> {``edgeml.metrics/1``, ``edgeml.metrics/2``}."""
    family, _, version = current.rpartition("/")
    return frozenset(f"{family}/{v}" for v in range(1, int(version) + 1))


METRICS = accepted_schemas(payloads.METRICS_SCHEMA)
INFO = accepted_schemas(payloads.INFO_SCHEMA)
SAMPLES = accepted_schemas(payloads.SAMPLE_SCHEMA)
FEEDBACK = accepted_schemas(payloads.FEEDBACK_SCHEMA)

class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_time(value: Any, what: str, required: bool = True) -> datetime | None:
    """An ISO 8601 timestamp (``...Z`` or with an offset) as an aware UTC datetime."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _Bad("missing-field" if value is None else "wrong-type",
                   f"{what} must be an ISO 8601 time, got {_show(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _Bad("wrong-type", f"{what}: {exc}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(obj: dict[str, Any], key: str, kinds: type | tuple[type, ...], what: str,
         required: bool = True) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Bad("missing-field", f"{what} is missing")
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise _Bad("wrong-type", f"{what} must not be a boolean")
    if not isinstance(value, kinds):
        raise _Bad("wrong-type", f"{what} has the wrong type: {_show(value)}")
    if isinstance(value, int) and not -_INT64 < value < _INT64:
        raise _Bad("wrong-type", f"{what} is out of range")
    return value


def _num(obj: Any, key: str, what: str) -> float | None:
    if not isinstance(obj, dict):
        return None
    value = _get(obj, key, (int, float), what, required=False)
    return None if value is None else float(value)


def _int(obj: Any, key: str, what: str, limit: int = _INT64) -> int | None:
    if not isinstance(obj, dict):
        return None
    value = _get(obj, key, int, what, required=False)
    if value is not None and not -limit < value < limit:
        raise _Bad("wrong-type", f"{what} is out of range")
    return None if value is None else int(value)


def _section(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad("wrong-type", f"{key} must be an object")
    return value


def _model(obj: dict[str, Any], required: bool) -> tuple[str | None, int | None]:
    model = obj.get("model")
    if model is None:
        if required:
            raise _Bad("missing-field", "model is missing")
        return None, None
    if not isinstance(model, dict):
        raise _Bad("wrong-type", "model must be an object")
    name = _get(model, "name", str, "model.name", required)
    version = _get(model, "version", int, "model.version", required)
    if version is not None and not 0 <= version < _INT32:
        raise _Bad("wrong-type", "model.version is out of range")
    if name is not None and len(name) > _MAX_NAME:
        raise _Bad("wrong-type", f"model.name is longer than {_MAX_NAME} characters")
    return name, version


def _identity(obj: dict[str, Any], fleet: str, device: str, schemas: frozenset[str]) -> None:
    schema = obj.get("schema")
    if schema is None:
        raise _Bad("missing-field", "schema is missing")
    if not isinstance(schema, str):
        raise _Bad("wrong-type", f"schema must be a string, got {_show(schema)}")
    if schema not in schemas:
        raise _Bad("unknown-schema", f"schema {_show(schema)} is not one of {sorted(schemas)}")
    for key, expected in (("fleet", fleet), ("device", device)):
        value = obj.get(key)
        if value is not None and value != expected:
            raise _Bad("topic-mismatch", f"{key} {_show(value)} does not match the topic")


class _Odd(Exception):
    """Something the fast path does not vouch for: the checked path decides."""


def _f(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    if kind is int and -_INT64 < value < _INT64:
        return float(value)  # type: ignore[arg-type]
    raise _Odd


def _i(obj: dict[str, Any], key: str, limit: int = _INT64) -> int | None:
    value = obj.get(key)
    if type(value) is int and -limit < value < limit:
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    raise _Odd


def _d(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if type(value) is dict:
        return value
    if value is None:
        return {}
    raise _Odd
