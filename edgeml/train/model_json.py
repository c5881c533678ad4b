"""``model.json``: the registry entry of one trained model version, as one typed model.

Written by the trainer (:func:`edgeml.train.workflow.train`, validated before it is written)
and read through :func:`read_model_json` by every reader (``edgeml models list|show|compare``,
``evaluate``, ``package`` and the converter via :class:`edgeml.train.registry.Registry`).
Every field is documented in README.md, section "model.json reference".

Versioning: ``schema_version`` is the major version of this format (an integer). A reader
refuses a major version it does not know, naming the file and the field. Within a major
version fields are only added, optional, and ignored by older readers, so an older edgeml
still reads a newer entry of the same major version.

Host side (pydantic); the device never reads ``model.json``: the bundle manifest
(:mod:`edgeml.bundle.manifest`) carries what a device needs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeml._validation import first_error
from edgeml.bundle.manifest import DerivedInput, InputSpec, Metrics
from edgeml.errors import RegistryError

__all__ = [
    "SCHEMA_VERSION",
    "Comparison",
    "DataInfo",
    "Feature",
    "FieldRows",
    "Files",
    "GateResult",
    "HoldoutComparison",
    "HoldoutMetrics",
    "LeaderboardRow",
    "Lineage",
    "ModelInfo",
    "ModelJson",
    "ReferenceProfile",
    "TargetSpec",
    "dump_model_json",
    "primary_metric",
    "read_model_json",
]

SCHEMA_VERSION = 1
FILENAME = "model.json"
TASKS = ("classification", "regression", "anomaly")
# The headline metric when the recipe's scoring is not a holdout metric and it has no gates.
DEFAULT_PRIMARY = {
    "classification": ("f1_macro", "accuracy"),
    "regression": ("r2", "rmse"),
    "anomaly": ("f1", "roc_auc", "anomaly_rate"),
}
STRUCTURED = ("confusion_matrix", "per_class")


class _Part(BaseModel):
    # Unknown fields are ignored on read (a newer minor addition); the trainer checks it wrote
    # nothing outside the schema (``dump_model_json``).
    model_config = ConfigDict(extra="ignore", frozen=True)


class DataInfo(_Part):
    source: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=0)
    rows_used: int = Field(ge=0)
    dropped_missing_target: int = Field(default=0, ge=0)
    train_rows: int = Field(ge=0)
    holdout_rows: int = Field(ge=0)


class ModelInfo(_Part):
    family: str
    params: dict[str, Any] = Field(default_factory=dict)
    cv_mean: float | None = None
    cv_std: float | None = None
    scoring: str | None = None
    converter: str = "skl2onnx"


class LeaderboardRow(_Part):
    rank: int = Field(ge=1)
    family: str
    params: dict[str, Any] = Field(default_factory=dict)
    cv_mean: float | None = None
    cv_std: float | None = None
    fit_time_s: float | None = None


class PerClass(_Part):
    precision: float
    recall: float
    f1: float
    support: int = Field(ge=0)


class HoldoutMetrics(_Part):
    """``holdout``: every metric of the task by name (a float, or null when undefined, e.g.
    ROC AUC with one class present), plus ``confusion_matrix`` and ``per_class``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    confusion_matrix: list[list[int]] | None = None
    per_class: dict[str, PerClass] | None = None

    @model_validator(mode="after")
    def _scalars(self) -> HoldoutMetrics:
        for key, value in (self.model_extra or {}).items():
            ok = value is None or (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value)
            )
            if not ok:
                raise ValueError(f"{key}: expected a number or null, got {value!r}")
        return self

    def scalars(self) -> dict[str, float]:
        """The numeric metrics (nulls left out), by name."""
        return {k: float(v) for k, v in sorted((self.model_extra or {}).items()) if v is not None}


class MetricsBlock(_Part):
    primary: str | None = None  # filled from the task when absent (entries before it existed)
    holdout: HoldoutMetrics = Field(default_factory=HoldoutMetrics)


class GateResult(_Part):
    metric: str
    op: str
    threshold: float
    value: float | None = None
    passed: bool


class Feature(_Part):
    """One raw input feature: the same fields as the bundle's ``InputSpec``."""

    name: str
    kind: Literal["numeric", "categorical", "text"]
    dtype: Literal["float32", "float64", "int64", "string"]
    nullable: bool = True
    categories: list[str] | None = None
    min: float | None = None
    max: float | None = None

    def input_spec(self) -> InputSpec:
        return InputSpec(name=self.name, kind=self.kind, dtype=self.dtype, nullable=self.nullable,
                         categories=self.categories, min=self.min, max=self.max)


class Derived(_Part):
    """A raw input derived into numeric features before the model (the manifest's
    :class:`~edgeml.bundle.manifest.DerivedInput`; absent: none)."""

    source: str
    features: list[str] = Field(min_length=1)
    kind: Literal["datetime"] = "datetime"
    timezone: str = "UTC"


class TargetSpec(_Part):
    name: str | None = None
    classes: list[str] | None = None


class ReferenceProfile(_Part):
    """The training data's profile (see :func:`edgeml.train.profile.reference_profile`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: int = Field(default=1, ge=1)  # 1: before quantile bins; 2: edgeml.train.reference
    rows: int = Field(default=0, ge=0)
    features: dict[str, dict[str, Any]] = Field(default_factory=dict)
    prediction: dict[str, Any] | None = None


class Files(_Part):
    pipeline: str = "pipeline.joblib"
    holdout: str = "holdout.parquet"
    report: str = "report.html"
    field_holdout: str | None = None  # retrained entries: the field holdout (optional)


class FieldRows(_Part):
    """``lineage.field``: the labelled field rows a retraining used (``edgeml.train.field``)."""

    db: str  # the fleet store, password redacted
    since: str | None = None
    train_rows: int = Field(ge=0)  # field rows in the training data
    holdout_rows: int = Field(ge=0)  # the newest field rows, held out for the comparison
    first_ts: str | None = None
    last_ts: str | None = None
    devices: list[str] = Field(default_factory=list)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # of the valid rows, canonical JSON
    excluded: dict[str, int] = Field(default_factory=dict)  # reason -> rows left out
    weight: float = 1.0
    weighting: Literal["sample_weight", "duplicate", "none"] = "none"
    field_only: bool = False


class ReferenceSource(_Part):
    """``lineage.reference``: the rows the drift reference profile was computed on."""

    source: Literal["field", "training"]
    rows: int = Field(ge=0)


class Lineage(_Part):
    """``lineage``: where a retrained version comes from (absent: trained by ``edgeml train``)."""

    parent: str | None = None  # NAME@VERSION it was retrained from (the champion)
    run_id: int | None = None  # the fleet store's retrain_runs row
    recipe_data_sha256: str | None = None
    recipe_rows: int = Field(default=0, ge=0)  # recipe rows in the training data
    field: FieldRows
    reference: ReferenceSource | None = None  # what the drift reference profile was built from


class HoldoutComparison(_Part):
    """One holdout on which challenger and champion were scored, paired."""

    holdout: Literal["recipe", "field"]
    rows: int = Field(ge=0)
    metric: str
    higher_is_better: bool = True
    champion: float | None = None
    challenger: float | None = None
    delta: float | None = None  # challenger - champion, in the metric's own direction
    ci_low: float | None = None  # 95 % paired bootstrap interval of delta
    ci_high: float | None = None
    mcnemar_p: float | None = None  # classification: exact McNemar test on correctness


class Comparison(_Part):
    """``comparison``: the challenger against the champion (``edgeml.train.compare``)."""

    champion: str
    metric: str
    margin: float
    holdouts: list[HoldoutComparison] = Field(default_factory=list)
    decision: Literal["challenger", "rejected"]
    reason: str


class ModelJson(_Part):
    """One registry entry (``<registry>/<name>/<version>/model.json``)."""

    schema_version: int
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: int = Field(ge=1)
    created_at: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
    edgeml_version: str
    task: Literal["classification", "regression", "anomaly"]
    recipe: dict[str, Any]
    recipe_sha256: str
    data: DataInfo
    libraries: dict[str, str] = Field(default_factory=dict)
    model: ModelInfo
    leaderboard: list[LeaderboardRow] = Field(default_factory=list)
    metrics: MetricsBlock
    gates: list[GateResult] = Field(default_factory=list)
    features: list[Feature] = Field(min_length=1)
    target: TargetSpec = Field(default_factory=TargetSpec)
    reference_profile: ReferenceProfile = Field(default_factory=ReferenceProfile)
    derived: list[Derived] = Field(default_factory=list)  # datetime columns (optional, minor add)
    files: Files = Field(default_factory=Files)
    lineage: Lineage | None = None  # retrained entries (optional, minor add)
    comparison: Comparison | None = None  # retrained entries (optional, minor add)

    @field_validator("schema_version", mode="before")
    @classmethod
    def _major(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {v!r}")
        if v != SCHEMA_VERSION:
            raise ValueError(
                f"version {v} is not supported: this edgeml reads model.json schema version "
                f"{SCHEMA_VERSION} (re-train the model, or use the edgeml that wrote it)"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelJson:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"features: {dup!r} appears twice")
        if self.task == "classification" and not self.target.classes:
            raise ValueError("target.classes: required for classification")
        scalars = self.metrics.holdout.scalars()
        if self.metrics.primary is None:
            primary = primary_metric(self.task, scalars, self.model.scoring,
                                     [g.metric for g in self.gates])
            object.__setattr__(self, "metrics", MetricsBlock(primary=primary,
                                                             holdout=self.metrics.holdout))
        elif scalars and self.metrics.primary not in scalars:
            raise ValueError(f"metrics.primary: {self.metrics.primary!r} is not a holdout metric")
        return self

    # -- what readers want ---------------------------------------------------

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def classes(self) -> list[str] | None:
        return self.target.classes

    def holdout_scalars(self) -> dict[str, float]:
        return self.metrics.holdout.scalars()

    def input_specs(self) -> list[InputSpec]:
        return [f.input_spec() for f in self.features]

    def bundle_metrics(self) -> Metrics:
        """The bundle manifest's ``metrics``: primary, scalar holdout metrics, row count."""
        hold = self.metrics.holdout
        return Metrics.from_holdout(
            {**hold.scalars(),
             "confusion_matrix": hold.confusion_matrix,
             "per_class": ({c: p.model_dump() for c, p in hold.per_class.items()}
                           if hold.per_class is not None else None)},
            primary=self.metrics.primary, rows=self.data.holdout_rows,
        )

    def derived_inputs(self) -> list[DerivedInput]:
        return [DerivedInput(source=d.source, features=list(d.features), kind=d.kind,
                             timezone=d.timezone) for d in self.derived]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, exactly what ``model.json`` holds (optional parts only when set)."""
        skip: set[str] = set()
        if not self.derived:
            skip.add("derived")
        if self.lineage is None:
            skip.add("lineage")
        if self.comparison is None:
            skip.add("comparison")
        out = self.model_dump(mode="json", exclude=skip or None)
        if out["files"].get("field_holdout") is None:
            out["files"].pop("field_holdout", None)
        return out


def primary_metric(task: str, holdout: dict[str, Any], scoring: str | None,
                   gates: list[str]) -> str | None:
    """The headline metric: the recipe's scoring when it is a holdout metric, else the first
    gate's metric, else the task's default (f1_macro, r2, f1 or anomaly_rate)."""
    numeric = [k for k, v in holdout.items() if v is not None and k not in STRUCTURED]
    for name in [scoring, *gates, *DEFAULT_PRIMARY.get(task, ())]:
        if name and name in numeric:
            return name
    return sorted(numeric)[0] if numeric else None


def _error(path: Path | str, exc: ValidationError) -> RegistryError:
    msg, where = first_error(exc)
    return RegistryError(f"{path}: {where + ': ' if where else ''}{msg}")


def parse_model_json(raw: Any, path: Path | str = FILENAME) -> ModelJson:
    """Validate an already parsed ``model.json``; RegistryError names the file and field."""
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: must be a JSON object")
    if "schema_version" not in raw:
        raise RegistryError(f"{path}: schema_version: missing (not an edgeml model.json?)")
    try:
        return ModelJson.model_validate(raw)
    except ValidationError as exc:
        raise _error(path, exc) from exc


def read_model_json(path: Path | str) -> ModelJson:
    """Read and validate the ``model.json`` at ``path``."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"unreadable {p}: {exc}") from exc
    return parse_model_json(raw, p)


def dump_model_json(meta: dict[str, Any], path: Path | str = FILENAME) -> bytes:
    """Validate what the trainer built and return the bytes of ``model.json``.

    Strict: a field outside the schema (a typo in the trainer) is refused here, before
    anything is registered, whereas readers ignore fields they do not know.
    """
    record = parse_model_json(meta, path)
    out = record.to_dict()
    extra = _unknown(meta, out)
    if extra:
        raise RegistryError(f"{path}: {extra}: not a field of model.json schema {SCHEMA_VERSION}")
    return (json.dumps(out, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def _unknown(given: Any, kept: Any, where: str = "") -> str | None:
    """The first key of ``given`` that validation dropped (dicts compared recursively)."""
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            at = f"{where}.{key}" if where else str(key)
            if key not in kept:
                return at
            found = _unknown(value, kept[key], at)
            if found:
                return found
    elif isinstance(given, list) and isinstance(kept, list):
        for n, (a, b) in enumerate(zip(given, kept, strict=False)):
            found = _unknown(a, b, f"{where}[{n}]")
            if found:
                return found
    return None
