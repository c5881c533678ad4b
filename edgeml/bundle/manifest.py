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

Inputs are raw features, one ONNX input per column, shape ``[None, 1]``:
numeric columns are float32 (NaN allowed where ``nullable``), categorical and
text columns are strings (a missing value is ``""``).

This module imports only the standard library: it is device-safe.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgeml.errors import BundleError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "MODEL",
    "SELFTEST",
    "SIGNATURE",
    "InputSpec",
    "Manifest",
    "OnnxInfo",
    "OutputSpec",
    "TargetInfo",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL = "model.onnx"
SELFTEST = "selftest.json"

KINDS = ("numeric", "categorical", "text")
DTYPES = ("float32", "float64", "int64", "string")
TASKS = ("classification", "regression", "anomaly")


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
class TargetInfo:
    """The device profile this bundle was built for (a copy of its key facts)."""

    name: str
    arch: str
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    memory_budget_mb: int | None = None


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
    metrics: dict[str, Any] = field(default_factory=dict)  # holdout metrics
    parity: dict[str, Any] = field(default_factory=dict)  # parity gate result
    reference_profile: dict[str, Any] = field(default_factory=dict)  # see edgeml.train.profile
    provenance: dict[str, Any] = field(default_factory=dict)  # recipe_sha256, data_sha256, ...
    quantization: dict[str, Any] = field(default_factory=dict)
    install: dict[str, Any] = field(default_factory=dict)  # how the target gets the runtime
    format_version: int = FORMAT_VERSION

    # -- (de)serialization -------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
                metrics=raw.get("metrics") or {},
                parity=raw.get("parity") or {},
                reference_profile=raw.get("reference_profile") or {},
                provenance=raw.get("provenance") or {},
                quantization=raw.get("quantization") or {},
                install=raw.get("install") or {},
            )
        except TypeError as exc:  # pragma: no cover - guarded by _build
            raise BundleError(f"{MANIFEST}: {exc}") from exc
        m.validate()
        return m

    def validate(self) -> None:
        """Check cross-field rules; raise BundleError naming the field."""
        if self.task not in TASKS:
            raise BundleError(f"{MANIFEST}: task: {self.task!r} is not one of {', '.join(TASKS)}")
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
