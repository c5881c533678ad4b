"""What an onnxruntime release can load: max opset per domain and max IR version.

``RUNTIME_TABLE`` is onnxruntime's own compatibility table
(https://onnxruntime.ai/docs/reference/compatibility.html, "ONNX opset support"),
releases 1.0 to 1.20, plus rows measured on this project's machines
(``source="measured"``: a tiny model stamped with increasing versions was
loaded until onnxruntime refused it). A release that is not in the table gets
the limits of the nearest older row: onnxruntime is backwards compatible, so
the older limits are always safe, at worst a little conservative.

The converters have limits too: skl2onnx converters are tested up to
``SKL2ONNX_MAX_OPSET`` and emit ``ai.onnx.ml`` ops up to ``SKL2ONNX_MAX_ML_OPSET``.

This module imports only the standard library at import time; the model helpers
import ``onnx`` when called.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from edgeml.errors import PackagingError, UsageError

__all__ = [
    "ML_DOMAIN",
    "RUNTIME_TABLE",
    "SKL2ONNX_MAX_ML_OPSET",
    "SKL2ONNX_MAX_OPSET",
    "RuntimeLimits",
    "check_runtime",
    "conversion_opsets",
    "ir_version_of",
    "limits_for_opset",
    "min_onnxruntime",
    "opset_of",
    "opsets_of",
    "runtime_limits",
]

ML_DOMAIN = "ai.onnx.ml"
SKL2ONNX_MAX_OPSET = 22  # skl2onnx.__max_supported_opset__ of skl2onnx 1.20
SKL2ONNX_MAX_ML_OPSET = 3  # skl2onnx 1.20 emits TreeEnsembleClassifier/Regressor (ml opset 3)


@dataclass(frozen=True)
class RuntimeLimits:
    """The newest model an onnxruntime release loads."""

    onnxruntime: str
    opset: int  # ai.onnx (default domain)
    ml_opset: int  # ai.onnx.ml
    ir_version: int
    source: str = "documented"  # documented | measured | nearest-older

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# (onnxruntime release, ai.onnx opset, ai.onnx.ml opset, IR version, source), newest first.
RUNTIME_TABLE: tuple[RuntimeLimits, ...] = tuple(
    RuntimeLimits(v, o, m, ir, src)
    for v, o, m, ir, src in (
        ("1.32", 28, 5, 14, "measured"),
        ("1.20", 21, 4, 10, "documented"),
        ("1.19", 21, 4, 10, "documented"),
        ("1.18", 21, 4, 10, "documented"),
        ("1.17", 20, 4, 9, "documented"),
        ("1.16", 19, 3, 9, "documented"),
        ("1.15", 19, 3, 8, "documented"),
        ("1.14", 18, 3, 8, "documented"),
        ("1.13", 17, 3, 8, "documented"),
        ("1.12", 17, 3, 8, "documented"),
        ("1.11", 16, 2, 8, "documented"),
        ("1.10", 15, 2, 8, "documented"),
        ("1.9", 15, 2, 8, "documented"),
        ("1.8", 14, 2, 7, "documented"),
        ("1.7", 13, 2, 7, "documented"),
        ("1.6", 13, 2, 7, "documented"),
        ("1.5", 12, 2, 7, "documented"),
        ("1.4", 12, 2, 7, "documented"),
        ("1.3", 12, 2, 7, "documented"),
        ("1.2", 11, 2, 6, "documented"),
        ("1.1", 11, 2, 6, "documented"),
        ("1.0", 11, 2, 6, "documented"),
    )
)

_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.\d+)?(?:[.+\-a-zA-Z0-9]*)\s*$")


def _key(version: str) -> tuple[int, int]:
    m = _VERSION_RE.match(version)
    if not m:
        raise UsageError(f"onnxruntime version {version!r} is not like '1.16' or '1.16.3'")
    return int(m.group(1)), int(m.group(2))


def runtime_limits(onnxruntime_version: str) -> RuntimeLimits:
    """Limits of an onnxruntime release ('1.16', '1.16.3'); unknown releases get the nearest older row."""
    key = _key(onnxruntime_version)
    for row in RUNTIME_TABLE:  # newest first
        if _key(row.onnxruntime) == key:
            return row
        if _key(row.onnxruntime) < key:
            return RuntimeLimits(
                onnxruntime_version, row.opset, row.ml_opset, row.ir_version, "nearest-older"
            )
    oldest = RUNTIME_TABLE[-1].onnxruntime
    raise PackagingError(
        f"onnxruntime {onnxruntime_version} is older than {oldest}, the oldest release edgeml supports"
    )


def limits_for_opset(opset: int) -> RuntimeLimits:
    """The most a device can load if all we know is that its runtime implements ``opset``.

    That is the oldest table row with at least this opset: its ML opset and IR version
    are the safe ones to emit.
    """
    rows = [r for r in RUNTIME_TABLE if r.opset >= opset]
    if not rows:
        newest = RUNTIME_TABLE[0]
        raise PackagingError(
            f"opset {opset} is newer than any known onnxruntime (max {newest.opset} "
            f"in onnxruntime {newest.onnxruntime})"
        )
    oldest = min(rows, key=lambda r: _key(r.onnxruntime))
    return RuntimeLimits(oldest.onnxruntime, opset, oldest.ml_opset, oldest.ir_version, oldest.source)


def conversion_opsets(limits: RuntimeLimits) -> dict[str, int]:
    """The ``target_opset`` mapping to hand skl2onnx for a runtime."""
    return {"": min(limits.opset, SKL2ONNX_MAX_OPSET), ML_DOMAIN: min(limits.ml_opset, SKL2ONNX_MAX_ML_OPSET)}


def _model(model: Any) -> Any:
    import onnx

    if isinstance(model, (bytes, bytearray)):
        return onnx.load_model_from_string(bytes(model))
    return model


def opsets_of(model: Any) -> dict[str, int]:
    """Opset per domain of a ModelProto (or its bytes); the default domain is ``""``."""
    return {o.domain if o.domain != "ai.onnx" else "": int(o.version) for o in _model(model).opset_import}


def opset_of(model: Any, domain: str = "") -> int:
    """Opset of one domain (default: ai.onnx), 0 when the model does not use the domain."""
    return opsets_of(model).get(domain, 0)


def ir_version_of(model: Any) -> int:
    return int(_model(model).ir_version)


def _exceeds(model: Any, limits: RuntimeLimits) -> list[str]:
    m = _model(model)
    ops = opsets_of(m)
    problems = []
    if ops.get("", 0) > limits.opset:
        problems.append(f"opset {ops['']} > {limits.opset}")
    if ops.get(ML_DOMAIN, 0) > limits.ml_opset:
        problems.append(f"{ML_DOMAIN} opset {ops[ML_DOMAIN]} > {limits.ml_opset}")
    if ir_version_of(m) > limits.ir_version:
        problems.append(f"IR version {ir_version_of(m)} > {limits.ir_version}")
    return problems


def check_runtime(model: Any, limits: RuntimeLimits) -> None:
    """Raise PackagingError if the model needs more than ``limits`` allows."""
    problems = _exceeds(model, limits)
    if problems:
        raise PackagingError(
            f"the model cannot run on onnxruntime {limits.onnxruntime}: " + ", ".join(problems)
        )


def min_onnxruntime(model: Any) -> str:
    """The oldest onnxruntime release (from the table) that loads this model."""
    m = _model(model)
    fits = [r for r in RUNTIME_TABLE if not _exceeds(m, r)]
    if not fits:
        raise PackagingError("no known onnxruntime release loads this model: " + ", ".join(_exceeds(m, RUNTIME_TABLE[0])))
    return min(fits, key=lambda r: _key(r.onnxruntime)).onnxruntime
