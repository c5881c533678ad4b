"""Recipes: the declarative description of a training job (``models/*.yaml``).

A recipe loads into a frozen, validated :class:`Recipe`. Every error names the
file and the field, e.g. ``models/x.yaml: split.holdout: must be < 1``.

Annotated example (see README for the full reference)::

    name: penguins                  # registry name: [a-z0-9][a-z0-9-]*
    task: classification            # classification | regression | anomaly
    data:
      source: data/penguins.csv     # path relative to the recipe, or sklearn:iris, or sqlite:path.db
      target: species
      columns: {island: categorical}  # optional kinds: numeric | categorical | text | datetime
      drop: [year]
    preprocess:
      numeric: {impute: median, scale: standard}
      categorical: {impute: most_frequent, encode: onehot}
    split: {holdout: 0.2, stratify: true, cv: 5, seed: 42}
    search: {method: grid, scoring: f1_macro}
    candidates:
      - family: random_forest
        params: {n_estimators: [50, 100]}
    gates: {f1_macro: ">= 0.90"}
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeml._validation import first_error
from edgeml.errors import NotFoundError, RecipeError
from edgeml.train.steps import validate_candidates

__all__ = [
    "CandidateSpec",
    "CategoricalSpec",
    "DataSpec",
    "DatetimeSpec",
    "FeaturesSpec",
    "Gate",
    "NumericSpec",
    "PreprocessSpec",
    "Recipe",
    "SearchSpec",
    "SplitSpec",
    "TextSpec",
    "load_recipe",
    "parse_recipe",
]

Task = Literal["classification", "regression", "anomaly"]
ColumnKind = Literal["numeric", "categorical", "text", "datetime"]
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
GATE_RE = re.compile(r"^\s*(>=|<=|>|<|==)\s*(-?[0-9.]+(?:[eE]-?[0-9]+)?)\s*$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Spec):
    """Where the data comes from and which column is the target."""

    source: str
    format: Literal["auto", "csv", "parquet", "jsonl", "sqlite", "sklearn"] = "auto"
    table: str | None = None
    query: str | None = None
    target: str | None = None
    columns: dict[str, ColumnKind] = Field(default_factory=dict)
    drop: tuple[str, ...] = ()


class NumericSpec(_Spec):
    impute: Literal["mean", "median", "constant"] = "median"
    fill_value: float = 0.0
    scale: Literal["standard", "minmax", "robust", "none"] = "standard"
    clip_outliers: float | None = Field(
        default=None, gt=0, description="clip to mean +- k standard deviations (fitted on train)"
    )


class CategoricalSpec(_Spec):
    impute: Literal["most_frequent", "constant"] = "most_frequent"
    fill_value: str = "missing"
    encode: Literal["onehot", "ordinal"] = "onehot"


class TextSpec(_Spec):
    lowercase: bool = True
    strip_punctuation: bool = True
    strip_digits: bool = True
    ngram_range: tuple[int, int] = (1, 1)
    max_features: int | None = Field(default=5000, gt=0)
    min_df: int = Field(default=1, ge=1)
    sublinear_tf: bool = False

    @field_validator("ngram_range")
    @classmethod
    def _ngrams(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 3:
            raise ValueError("must be [low, high] with 1 <= low <= high <= 3")
        return v


class PreprocessSpec(_Spec):
    numeric: NumericSpec = NumericSpec()
    categorical: CategoricalSpec = CategoricalSpec()
    text: TextSpec = TextSpec()


class SelectSpec(_Spec):
    method: Literal["variance", "kbest_anova", "kbest_mutual_info", "model"]
    k: int | None = Field(default=None, gt=0)
    threshold: float | None = None


class PolynomialSpec(_Spec):
    degree: int = Field(default=2, ge=2, le=3)
    interaction_only: bool = False


class PCASpec(_Spec):
    n_components: int = Field(gt=0)


class DatetimeSpec(_Spec):
    """``features.datetime``: what every ``datetime`` column becomes (edgeml.bundle.derive).

    ``derive`` null: month, weekday, dayofyear_sin/cos, plus hour_sin/cos when the data has
    times of day. ``timezone``: the IANA zone of naive timestamps (and of the derived
    calendar); ``UTC`` needs no time zone database on the device.
    """

    derive: tuple[str, ...] | None = None
    timezone: str = "UTC"

    @field_validator("derive")
    @classmethod
    def _derive(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        from edgeml.bundle.manifest import DATETIME_FEATURES

        if v is not None:
            if not v:
                raise ValueError("must list at least one feature (or be null for the default)")
            bad = [f for f in v if f not in DATETIME_FEATURES]
            if bad:
                raise ValueError(f"{bad[0]!r} is not one of {', '.join(DATETIME_FEATURES)}")
            if len(set(v)) != len(v):
                raise ValueError("lists a feature twice")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from edgeml.bundle.derive import resolve_timezone
        from edgeml.errors import BundleError

        try:
            resolve_timezone(v)
        except BundleError as exc:
            raise ValueError(str(exc)) from exc
        return v


class FeaturesSpec(_Spec):
    datetime: DatetimeSpec | None = None  # None: the defaults (left out of the recipe hash)
    polynomial: PolynomialSpec | None = None
    select: SelectSpec | None = None
    pca: PCASpec | None = None


class SplitSpec(_Spec):
    holdout: float = Field(default=0.2, gt=0, lt=1)
    stratify: bool = True
    cv: int = Field(default=5, ge=2, le=20)
    seed: int = 42
    time_column: str | None = None


SCHEDULER_RE = re.compile(r"^(tcp|tls|ws|wss|inproc)://\S+$")
BACKEND_EXTRAS = {"dask": ("distributed", "edgeml[dask]"), "ray": ("ray", "edgeml[ray]")}


class SearchSpec(_Spec):
    """``search``: how candidates are searched, and where.

    ``backend: local`` (default) fits in this process (``n_jobs`` joblib workers);
    ``backend: dask`` sends the fits to the Dask cluster at ``scheduler``
    (``tcp://HOST:PORT``) through joblib's ``dask`` backend; ``backend: ray`` to a Ray
    cluster (``scheduler``: its address, or null for ``ray.init()``'s default). The
    leaderboard is the same as a local run's for the same seed.
    """

    method: Literal["grid", "random", "halving"] = "grid"
    n_iter: int = Field(default=20, gt=0)
    scoring: str | None = None
    n_jobs: int = 1
    backend: Literal["local", "dask", "ray"] = "local"
    scheduler: str | None = None
    connect_timeout: float = Field(default=10.0, gt=0, le=600)  # seconds to reach the scheduler

    def problem(self) -> tuple[str, str] | None:
        """``(field, message)`` of what is wrong with backend/scheduler, or None."""
        import importlib.util

        if self.backend == "local":
            return ("search.scheduler", "only with backend dask or ray") if self.scheduler else None
        if self.backend == "dask" and self.scheduler is None:
            return ("search.scheduler", "backend dask needs the scheduler's address, "
                    "e.g. tcp://HOST:8786")
        if self.scheduler is not None and not SCHEDULER_RE.match(self.scheduler):
            return ("search.scheduler", f"{self.scheduler!r} is not an address like tcp://HOST:PORT")
        module, extra = BACKEND_EXTRAS[self.backend]
        if importlib.util.find_spec(module) is None:
            return ("search.backend", f"{self.backend} needs the {module!r} package, which is "
                    f"not installed: pip install '{extra}'")
        return None


class CandidateSpec(_Spec):
    """One model family and its search space: each param maps to a list of values to try."""

    family: str
    params: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("params", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: val if isinstance(val, list) else [val] for k, val in v.items()}
        return v


class Gate(_Spec):
    metric: str
    op: Literal[">=", "<=", ">", "<", "=="]
    threshold: float

    def check(self, value: float) -> bool:
        return {
            ">=": value >= self.threshold,
            "<=": value <= self.threshold,
            ">": value > self.threshold,
            "<": value < self.threshold,
            "==": value == self.threshold,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


class Recipe(_Spec):
    name: str
    description: str = ""
    task: Task
    data: DataSpec
    preprocess: PreprocessSpec = PreprocessSpec()
    features: FeaturesSpec = FeaturesSpec()
    split: SplitSpec = SplitSpec()
    search: SearchSpec = SearchSpec()
    candidates: tuple[CandidateSpec, ...] = Field(min_length=1)
    gates: tuple[Gate, ...] = ()
    # Set by the loader, not by the file.
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be lowercase letters, digits and '-', starting with a letter or digit")
        return v

    @field_validator("gates", mode="before")
    @classmethod
    def _gates(cls, v: Any) -> Any:
        if isinstance(v, dict):
            gates = []
            for metric, expr in v.items():
                m = GATE_RE.match(str(expr))
                if not m:
                    raise ValueError(f"{metric}: {expr!r} is not a comparison like '>= 0.9'")
                gates.append({"metric": metric, "op": m.group(1), "threshold": float(m.group(2))})
            return gates
        return v

    @model_validator(mode="after")
    def _task_needs(self) -> Recipe:
        if self.task in ("classification", "regression") and not self.data.target:
            raise ValueError(f"data.target is required for task {self.task}")
        return self

    @property
    def base_dir(self) -> Path:
        """Folder that relative data paths are resolved against."""
        return self.path.parent if self.path else Path.cwd()

    def to_dict(self) -> dict[str, Any]:
        exclude: dict[str, Any] = {"path": True}
        if self.features.datetime is None:  # recipes without it hash as before it existed
            exclude["features"] = {"datetime"}
        if self.search.backend == "local":  # likewise for search.backend/scheduler
            exclude["search"] = {"backend", "scheduler", "connect_timeout"}
        return self.model_dump(mode="json", exclude=exclude)

    def sha256(self) -> str:
        """Hash of the recipe's normalized content (not of the file's formatting).

        Where the search runs (``search.backend``/``scheduler``/``connect_timeout``) is left
        out: it does not change what is trained.
        """
        content = self.to_dict()
        for key in ("backend", "scheduler", "connect_timeout"):
            content["search"].pop(key, None)
        blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def parse_recipe(raw: Any, path: Path | str = "<recipe>") -> Recipe:
    """Validate a recipe already parsed from YAML; errors name ``path`` and the field."""
    if not isinstance(raw, dict):
        raise RecipeError(path, "a recipe must be a YAML mapping")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(path, *first_error(exc)) from exc
    recipe = recipe.model_copy(update={"path": Path(path)}) if str(path) != "<recipe>" else recipe
    problem = recipe.search.problem()
    if problem is not None:
        raise RecipeError(path, problem[1], problem[0])
    validate_candidates(recipe)  # the catalog: families, params, and what cannot convert
    return recipe


def load_recipe(path: Path | str) -> Recipe:
    """Read and validate ``path``."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"recipe not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(p, f"not valid YAML: {exc}") from exc
    return parse_recipe(raw, p)
