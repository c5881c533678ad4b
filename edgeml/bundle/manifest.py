"""The bundle manifest: what a bundle says about itself.

A bundle (``<name>-<version>-<target>.edgeml``) is a zip archive, written
deterministically (sorted entries, fixed timestamps taken from the registry
entry, fixed permissions), holding::

    manifest.json     this schema, UTF-8 JSON, keys sorted, 2-space indent
    manifest.sig      optional: base64 ed25519 signature over manifest.json's exact bytes
    model.onnx        the whole pipeline (preprocessing and model) as ONNX
    selftest.json     {"rows": [{feature: value}], "expected": {output: [...]}, "atol": float}
    wheels/*.whl      optional (--offline): everything the target needs to pip install

``manifest.files`` maps every archive member except ``manifest.json`` and
``manifest.sig`` to its sha256.

``manifest.metrics`` (:class:`Metrics`) has one shape: the trainer's holdout metrics of the
packaged model, measured once before packaging::

    {"primary": "f1_macro",                        # the headline metric, a key of holdout
     "holdout": {"accuracy": 0.986, "f1_macro": 0.983, ...},   # name -> float, scalars only
     "holdout_rows": 69,
     "confusion_matrix": [[30, 0, 0], ...] | null, # classification and labelled anomaly
     "per_class": {"Adelie": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 30}} | null}

Format versions: 1 (metrics a free-form dict), 2 (metrics as above). A reader refuses any
other ``format_version`` with an error naming it.

Inputs are raw features, one ONNX input per column, shape ``[None, 1]``:
numeric columns are float32 (NaN allowed where ``nullable``), categorical and
text columns are strings (a missing value is ``""``).

``derived`` (optional, absent = none): inputs a device sends raw and the runtime turns into
numeric ONNX inputs before the graph (:class:`DerivedInput`, :mod:`edgeml.bundle.derive`),
e.g. a ``timestamp`` string -> ``timestamp_month``, ``timestamp_hour_sin``, ...

This module imports only the standard library: it is device-safe.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgeml.errors import BundleError

__all__ = [
    "DATETIME_FEATURES",
    "FORMAT_VERSION",
    "MANIFEST",
    "MODEL",
    "SELFTEST",
    "SIGNATURE",
    "DerivedInput",
    "InputSpec",
    "Manifest",
    "Metrics",
    "OnnxInfo",
    "OutputSpec",
    "RuntimeInfo",
    "ServeLimits",
    "TargetInfo",
]

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL = "model.onnx"
SELFTEST = "selftest.json"

KINDS = ("numeric", "categorical", "text")
DTYPES = ("float32", "float64", "int64", "string")
TASKS = ("classification", "regression", "anomaly")
# What a ``datetime`` derived input can produce (see edgeml.bundle.derive for the definitions).
DATETIME_FEATURES = (
    "year", "month", "day", "weekday", "dayofyear", "hour", "minute", "weekend",
    "dayofyear_sin", "dayofyear_cos", "weekday_sin", "weekday_cos", "hour_sin", "hour_cos",
)


@dataclass(frozen=True)
class InputSpec:
    """One raw feature, fed to the ONNX input of the same name."""

    name: str
    kind: str  # numeric | categorical | text
    dtype: str  # ONNX element type: float32 | int64 | string
    nullable: bool = True  # numeric: NaN/None accepted (imputed); string: "" accepted
    categories: list[str] | None = None  # categorical: the values seen in training
    min: float | None = None  # numeric: observed range in training data
    max: float | None = None


@dataclass(frozen=True)
class DerivedInput:
    """A raw input the device sends (``source``) and the numeric ONNX inputs derived from it.

    ``kind`` ``datetime``: ``features`` (of ``DATETIME_FEATURES``, in input order) become the
    inputs ``<source>_<feature>``; naive timestamps are wall time in ``timezone`` (IANA name).
    """

    source: str
    features: list[str]
    kind: str = "datetime"
    timezone: str = "UTC"

    @property
    def names(self) -> list[str]:
        """The ONNX inputs this input becomes, in ``features`` order."""
        return [f"{self.source}_{f}" for f in self.features]

    def check(self, where: str) -> None:
        if self.kind != "datetime":
            raise BundleError(f"{MANIFEST}: {where}.kind: {self.kind!r} is not one of ('datetime',)")
        if not isinstance(self.features, list) or not self.features:
            raise BundleError(f"{MANIFEST}: {where}.features: expected a non-empty list")
        for f in self.features:
            if f not in DATETIME_FEATURES:
                raise BundleError(f"{MANIFEST}: {where}.features: {f!r} is not one of "
                                  f"{', '.join(DATETIME_FEATURES)}")
        if not isinstance(self.timezone, str) or not self.timezone:
            raise BundleError(f"{MANIFEST}: {where}.timezone: expected an IANA time zone name")


@dataclass(frozen=True)
class OutputSpec:
    """Which ONNX outputs mean what.

    classification: ``label`` (class per row) and ``probabilities`` ([rows, classes],
    columns in ``classes`` order); regression: ``prediction`` ([rows] or [rows, 1]);
    anomaly: ``label`` (1 normal, -1 anomaly, as scikit-learn) and ``score``.
    """

    label: str | None = None
    probabilities: str | None = None
    prediction: str | None = None
    score: str | None = None
    classes: list[str] | None = None  # class names as strings, in probability column order
    label_dtype: str | None = None  # ONNX element type of the label output


@dataclass(frozen=True)
class OnnxInfo:
    opset: int
    ir_version: int
    min_onnxruntime: str
    quantized: bool = False


@dataclass(frozen=True)
class ServeLimits:
    """The HTTP server's resource limits from the device profile's ``serve:`` section.

    ``None`` means the runtime's default (:class:`edgeml.runtime.http_protocol.Limits`);
    manifests written before this field existed load with every value ``None``.
    """

    max_connections: int | None = None
    max_buffered_bytes: int | None = None  # request bytes held across all connections
    max_body_bytes: int | None = None
    request_timeout: float | None = None  # seconds from a request's first byte to its last
    idle_timeout: float | None = None  # seconds a keep-alive connection may sit idle

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            integer = f.name.startswith("max_")
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, int if integer else (int, float)) or value <= 0):
                kind = "a positive integer" if integer else "a positive number"
                raise BundleError(f"{MANIFEST}: target.serve.{f.name}: must be {kind} or null")


@dataclass(frozen=True)
class TargetInfo:
    """The device profile this bundle was built for (a copy of its key facts)."""

    name: str
    arch: str
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    memory_budget_mb: int | None = None
    serve: ServeLimits = field(default_factory=ServeLimits)

    def __post_init__(self) -> None:
        if isinstance(self.serve, dict):  # from JSON
            object.__setattr__(self, "serve", _build(ServeLimits, self.serve, "target.serve"))


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BundleError(f"{MANIFEST}: {where}: expected a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Metrics:
    """The packaged model's holdout metrics, as the trainer measured them (see module doc)."""

    primary: str | None = None  # the headline metric: a key of ``holdout`` (None: no metrics)
    holdout: dict[str, float] = field(default_factory=dict)  # scalar holdout metrics by name
    holdout_rows: int | None = None  # rows the holdout metrics were computed on
    confusion_matrix: list[list[int]] | None = None  # rows = true, columns = predicted
    per_class: dict[str, dict[str, float]] | None = None  # class -> precision/recall/f1/support

    @property
    def primary_value(self) -> float | None:
        """``holdout[primary]``, or None when there are no metrics."""
        return self.holdout.get(self.primary) if self.primary else None

    @classmethod
    def from_holdout(
        cls, holdout: dict[str, Any], *, primary: str | None, rows: int | None = None
    ) -> Metrics:
        """From the trainer's holdout dict (scalars plus ``confusion_matrix``/``per_class``):
        non-finite or missing scalars are left out; a ``primary`` left out that way gives way
        to the first remaining metric by name."""
        scalars = {
            k: float(v) for k, v in sorted(holdout.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        matrix, per_class = holdout.get("confusion_matrix"), holdout.get("per_class")
        return cls.from_dict({
            "primary": primary if primary in scalars else next(iter(scalars), None),
            "holdout": scalars,
            "holdout_rows": rows,
            "confusion_matrix": matrix if isinstance(matrix, list) else None,
            "per_class": per_class if isinstance(per_class, dict) else None,
        })

    @classmethod
    def from_dict(cls, raw: Any, where: str = "metrics") -> Metrics:
        """Validate ``raw`` (the manifest's ``metrics`` object); BundleError names the field."""
        if not isinstance(raw, dict):
            raise BundleError(f"{MANIFEST}: {where}: expected an object")
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise BundleError(f"{MANIFEST}: {where}.{unknown[0]}: unknown field")
        hold = raw.get("holdout") or {}
        if not isinstance(hold, dict):
            raise BundleError(f"{MANIFEST}: {where}.holdout: expected an object of name -> number")
        holdout = {str(k): _number(v, f"{where}.holdout.{k}") for k, v in hold.items()}
        primary = raw.get("primary")
        if primary is not None and primary not in holdout:
            raise BundleError(f"{MANIFEST}: {where}.primary: {primary!r} is not a holdout metric")
        if primary is None and holdout:
            raise BundleError(f"{MANIFEST}: {where}.primary: missing (holdout metrics are given)")
        rows = raw.get("holdout_rows")
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
            raise BundleError(f"{MANIFEST}: {where}.holdout_rows: expected a count, got {rows!r}")
        matrix = raw.get("confusion_matrix")
        if matrix is not None and not (
            isinstance(matrix, list)
            and all(isinstance(r, list) and len(r) == len(matrix) for r in matrix)
            and all(isinstance(c, int) and not isinstance(c, bool) for r in matrix for c in r)
        ):
            raise BundleError(f"{MANIFEST}: {where}.confusion_matrix: expected a square matrix of counts")
        per = raw.get("per_class")
        per_class = None
        if per is not None:
            if not isinstance(per, dict) or not all(isinstance(v, dict) for v in per.values()):
                raise BundleError(f"{MANIFEST}: {where}.per_class: expected class -> {{metric: number}}")
            per_class = {str(c): {k: _number(v, f"{where}.per_class.{c}.{k}") for k, v in d.items()}
                         for c, d in per.items()}
            # support is a count: keep it an int in the JSON
            per_class = {c: {k: (int(v) if k == "support" else v) for k, v in d.items()}
                         for c, d in per_class.items()}
        return cls(primary=primary, holdout=holdout, holdout_rows=rows,
                   confusion_matrix=matrix, per_class=per_class)


@dataclass(frozen=True)
class RuntimeInfo:
    """How the device should run this model; chosen per model when packaging.

    ``intra_op_threads``: 1, or the profile's cores where they measured clearly faster
    (``threads_chosen_by``: ``measured`` | ``profile``). A manifest without this block means 1.
    """

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    threads_chosen_by: str = "default"


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    task: str
    created_at: str  # ISO 8601 UTC, from the registry entry
    edgeml_version: str
    target: TargetInfo
    onnx: OnnxInfo
    inputs: list[InputSpec]
    outputs: OutputSpec
    files: dict[str, str]  # archive member -> sha256 hex
    metrics: Metrics = field(default_factory=Metrics)  # holdout metrics, one shape
    parity: dict[str, Any] = field(default_factory=dict)  # parity gate result
    reference_profile: dict[str, Any] = field(default_factory=dict)  # see edgeml.train.reference
    provenance: dict[str, Any] = field(default_factory=dict)  # recipe_sha256, data_sha256, ...
    quantization: dict[str, Any] = field(default_factory=dict)
    install: dict[str, Any] = field(default_factory=dict)  # how the target gets the runtime
    runtime: RuntimeInfo = field(default_factory=RuntimeInfo)
    build: dict[str, Any] = field(default_factory=dict)  # {"stages": [{name, outcome, detail}]}
    derived: list[DerivedInput] = field(default_factory=list)  # raw inputs derived before ONNX
    format_version: int = FORMAT_VERSION

    # -- (de)serialization -------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.derived:  # absent means none: bundles without derived inputs are unchanged
            del out["derived"]
        return out

    def to_json(self) -> bytes:
        """The canonical bytes written to ``manifest.json`` (and signed)."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError(f"{MANIFEST}: not valid JSON: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Manifest:
        if not isinstance(raw, dict):
            raise BundleError(f"{MANIFEST}: must be a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{MANIFEST}: format_version: {version!r} is not supported "
                f"(this edgeml reads {FORMAT_VERSION})"
            )
        try:
            m = cls(
                name=_req(raw, "name", str),
                version=_req(raw, "version", int),
                task=_req(raw, "task", str),
                created_at=_req(raw, "created_at", str),
                edgeml_version=_req(raw, "edgeml_version", str),
                target=_build(TargetInfo, _req(raw, "target", dict), "target"),
                onnx=_build(OnnxInfo, _req(raw, "onnx", dict), "onnx"),
                inputs=[
                    _build(InputSpec, i, f"inputs[{n}]")
                    for n, i in enumerate(_req(raw, "inputs", list))
                ],
                outputs=_build(OutputSpec, _req(raw, "outputs", dict), "outputs"),
                files=_req(raw, "files", dict),
                metrics=Metrics.from_dict(raw.get("metrics") or {}),
                parity=raw.get("parity") or {},
                reference_profile=raw.get("reference_profile") or {},
                provenance=raw.get("provenance") or {},
                quantization=raw.get("quantization") or {},
                install=raw.get("install") or {},
                runtime=_build(RuntimeInfo, raw.get("runtime") or {}, "runtime"),
                build=raw.get("build") or {},
                derived=[
                    _build(DerivedInput, d, f"derived[{n}]")
                    for n, d in enumerate(raw.get("derived") or [])
                ],
            )
        except TypeError as exc:  # pragma: no cover - guarded by _build
            raise BundleError(f"{MANIFEST}: {exc}") from exc
        m.validate()
        return m

    def validate(self) -> None:
        """Check cross-field rules; raise BundleError naming the field."""
        if self.task not in TASKS:
            raise BundleError(f"{MANIFEST}: task: {self.task!r} is not one of {', '.join(TASKS)}")
        if not isinstance(self.metrics, Metrics):
            raise BundleError(f"{MANIFEST}: metrics: expected Metrics, got {type(self.metrics).__name__}")
        if not self.inputs:
            raise BundleError(f"{MANIFEST}: inputs: must not be empty")
        seen: set[str] = set()
        for n, spec in enumerate(self.inputs):
            if spec.kind not in KINDS:
                raise BundleError(f"{MANIFEST}: inputs[{n}].kind: {spec.kind!r} is not one of {KINDS}")
            if spec.dtype not in DTYPES:
                raise BundleError(f"{MANIFEST}: inputs[{n}].dtype: {spec.dtype!r} is not one of {DTYPES}")
            if spec.name in seen:
                raise BundleError(f"{MANIFEST}: inputs[{n}].name: {spec.name!r} appears twice")
            seen.add(spec.name)
        numeric = {s.name for s in self.inputs if s.kind == "numeric"}
        for n, d in enumerate(self.derived):
            d.check(f"derived[{n}]")
            if d.source in seen:
                raise BundleError(f"{MANIFEST}: derived[{n}].source: {d.source!r} is also an input")
            lacking = [name for name in d.names if name not in numeric]
            if lacking:
                raise BundleError(f"{MANIFEST}: derived[{n}]: {lacking[0]!r} is not a numeric input")
        if MODEL not in self.files:
            raise BundleError(f"{MANIFEST}: files: has no entry for {MODEL}")
        out = self.outputs
        if self.task == "classification" and not (out.label and out.classes):
            raise BundleError(f"{MANIFEST}: outputs: classification needs label and classes")
        if self.task == "regression" and not out.prediction:
            raise BundleError(f"{MANIFEST}: outputs.prediction: required for regression")
        if self.task == "anomaly" and not out.label:
            raise BundleError(f"{MANIFEST}: outputs.label: required for anomaly detection")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.target.name}.edgeml"


def _req(raw: dict[str, Any], key: str, typ: type) -> Any:
    if key not in raw:
        raise BundleError(f"{MANIFEST}: {key}: missing")
    value = raw[key]
    if (typ is int and isinstance(value, bool)) or not isinstance(value, typ):
        raise BundleError(f"{MANIFEST}: {key}: expected {typ.__name__}, got {type(value).__name__}")
    return value


def _build(cls: Any, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise BundleError(f"{MANIFEST}: {where}: expected an object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise BundleError(f"{MANIFEST}: {where}.{unknown[0]}: unknown field")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise BundleError(f"{MANIFEST}: {where}: {exc}") from exc
