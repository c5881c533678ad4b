"""Device profiles: what a target device runs and how much room a model gets there.

A profile is a YAML file (``devices/<name>.yaml``) that loads into a frozen, validated
:class:`DeviceProfile`; every error names the file and the field, e.g.
``devices/my-board.yaml: max_opset: Input should be greater than or equal to 7``.

Where profiles are looked up, first match wins:

1. ``--devices DIR`` (``devices_dir=``), else ``$EDGEML_DEVICES`` (folders separated by ``:``);
2. the stock profiles: ``<checkout>/devices`` when edgeml runs from a source checkout, else the
   copies shipped inside the package (``edgeml/package/devices``).

So a user's own ``my-board.yaml`` in their folder sits next to the stock ones, and one with a
stock name overrides it. ``--target path/to/file.yaml`` loads a file directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeml._validation import first_error
from edgeml.bundle.manifest import ServeLimits
from edgeml.convert.limits import RUNTIME_TABLE, RuntimeLimits
from edgeml.errors import NotFoundError, ProfileError
from edgeml.package.policy import QuantizePolicy

__all__ = [
    "DeviceProfile",
    "QuantizationPolicy",
    "RuntimeInstall",
    "ServeSpec",
    "Threads",
    "devices_path",
    "list_profiles",
    "load_profile",
    "parse_profile",
    "stock_devices_dir",
]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PACKAGED_DIR = Path(__file__).with_name("devices")
CHECKOUT_DIR = Path(__file__).resolve().parents[2] / "devices"
ENV_VAR = "EDGEML_DEVICES"
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(\.\d+)?$")


def _documented_limits(version: str) -> RuntimeLimits | None:
    """The compatibility-table row for exactly this onnxruntime major.minor, if there is one."""
    m = _VERSION_RE.match(version)
    key = (m.group(1), m.group(2)) if m else None
    for row in RUNTIME_TABLE:
        if tuple(row.onnxruntime.split(".")[:2]) == key:
            return row
    return None


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeInstall(_Spec):
    """How the runtime gets onto the device: PyPI wheels for these platform tags, or distro packages."""

    method: Literal["pypi", "distro"]
    platform_tags: tuple[str, ...] = ()
    distro_packages: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _needs(self) -> RuntimeInstall:
        if self.method == "pypi" and not self.platform_tags:
            raise ValueError("method pypi needs platform_tags (e.g. manylinux_2_28_aarch64)")
        if self.method == "distro" and not self.distro_packages:
            raise ValueError("method distro needs distro_packages (e.g. python3-onnxruntime)")
        return self


class Threads(_Spec):
    """onnxruntime session threads. ``intra_op: auto`` (default): measured per model when
    packaging, 1 against the profile's ``cores`` at ``typical_batch`` rows
    (:mod:`edgeml.package.threads`); a number fixes it (0 is onnxruntime's default)."""

    intra_op: int | Literal["auto"] = "auto"
    inter_op: int = Field(default=1, ge=0, le=256)
    typical_batch: int = Field(default=1, ge=1, le=65536)

    @field_validator("intra_op", mode="before")
    @classmethod
    def _intra(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 256):
            return v
        raise ValueError(f"{v!r} is not auto or a number of threads from 0 to 256")


class QuantizationPolicy(_Spec):
    """See :mod:`edgeml.package.policy` for what each policy does."""

    policy: QuantizePolicy = "auto"
    max_metric_drop: float = Field(default=1.0, ge=0, le=100)


class ServeSpec(_Spec):
    """HTTP server limits that fit the device (``serve:``); the bundle manifest records them
    and ``edgeml serve`` uses them unless told otherwise. Unset: the runtime's defaults."""

    max_connections: int | None = Field(default=None, ge=1, le=100_000)
    max_buffered_bytes: int | None = Field(default=None, ge=64 * 1024)
    max_body_bytes: int | None = Field(default=None, ge=1024)
    request_timeout: float | None = Field(default=None, gt=0, le=3600)
    idle_timeout: float | None = Field(default=None, gt=0, le=3600)

    def manifest_limits(self) -> ServeLimits:
        """What the bundle manifest records (``target.serve``)."""
        return ServeLimits(**self.model_dump())


class DeviceProfile(_Spec):
    name: str
    description: str = ""
    arch: Literal["x86_64", "aarch64", "armv7l"]
    os: str
    python: str
    runtime: RuntimeInstall
    onnxruntime: str
    max_opset: int = Field(ge=7)
    max_ml_opset: int = Field(ge=1)
    max_ir_version: int = Field(ge=3)
    cores: int = Field(default=1, ge=1, le=256)
    threads: Threads = Threads()
    memory_budget_mb: int = Field(gt=0)
    runtime_overhead_mb: int = Field(default=80, ge=0)
    quantization: QuantizationPolicy = QuantizationPolicy()
    serve: ServeSpec = ServeSpec()
    # Set by the loader, not by the file.
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be lowercase letters, digits, '-' and '_', starting with a letter or digit")
        return v

    @field_validator("python")
    @classmethod
    def _python(cls, v: str) -> str:
        if not re.match(r"^3\.\d{1,2}$", v):
            raise ValueError(f"{v!r} is not a Python version like \"3.11\" (quote it in YAML)")
        return v

    @field_validator("onnxruntime")
    @classmethod
    def _ort(cls, v: str) -> str:
        if not _VERSION_RE.match(v):
            raise ValueError(f"{v!r} is not a version like \"1.21.0\" (quote it in YAML)")
        return v

    @model_validator(mode="after")
    def _within_runtime(self) -> DeviceProfile:
        if self.runtime_overhead_mb >= self.memory_budget_mb:
            raise ValueError(
                f"memory_budget_mb: {self.memory_budget_mb} leaves no room for a model after "
                f"runtime_overhead_mb {self.runtime_overhead_mb}"
            )
        lim = _documented_limits(self.onnxruntime)
        if lim is None:  # a release the table has no row for: trust the file
            return self
        for key, have, most in (
            ("max_opset", self.max_opset, lim.opset),
            ("max_ml_opset", self.max_ml_opset, lim.ml_opset),
            ("max_ir_version", self.max_ir_version, lim.ir_version),
        ):
            if have > most:
                raise ValueError(
                    f"{key}: {have} is more than onnxruntime {self.onnxruntime} implements ({most})"
                )
        return self

    @property
    def runtime_limits(self) -> RuntimeLimits:
        """The newest model this device loads, for :func:`edgeml.convert.to_onnx`."""
        return RuntimeLimits(
            self.onnxruntime, self.max_opset, self.max_ml_opset, self.max_ir_version, f"profile {self.name}"
        )

    @property
    def model_budget_mb(self) -> int:
        """What a loaded model may add to the runtime process."""
        return self.memory_budget_mb - self.runtime_overhead_mb

    @property
    def python_tag(self) -> str:
        return "cp" + self.python.replace(".", "")

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"path"})
        data["source"] = str(self.path) if self.path else None
        return data


def parse_profile(raw: Any, path: Path | str = "<profile>") -> DeviceProfile:
    """Validate a profile already parsed from YAML; errors name ``path`` and the field."""
    if not isinstance(raw, dict):
        raise ProfileError(path, "a device profile must be a YAML mapping")
    try:
        profile = DeviceProfile.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(path, *first_error(exc)) from exc
    return profile.model_copy(update={"path": Path(path)}) if str(path) != "<profile>" else profile


def _read(path: Path) -> DeviceProfile:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(path, f"not valid YAML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(path, f"cannot read: {exc}") from exc
    return parse_profile(raw, path)


def _read_in_dir(path: Path) -> DeviceProfile:
    profile = _read(path)
    if profile.name != path.stem:
        raise ProfileError(path, f"{profile.name!r} must match the file name {path.stem!r}", "name")
    return profile


def stock_devices_dir() -> Path:
    """``<checkout>/devices`` when running from a source checkout, else the packaged copies."""
    if CHECKOUT_DIR.is_dir() and (CHECKOUT_DIR.parent / "pyproject.toml").is_file():
        return CHECKOUT_DIR
    return PACKAGED_DIR


def devices_path(devices_dir: Path | str | None = None) -> list[Path]:
    """The folders searched for profiles, in order (user folders first, stock last)."""
    if devices_dir is not None:
        user = [Path(devices_dir)]
    else:
        env = os.environ.get(ENV_VAR, "")
        user = [Path(p) for p in env.split(os.pathsep) if p]
    for folder in user:
        if not folder.is_dir():
            raise NotFoundError(f"devices folder not found: {folder}")
    dirs: list[Path] = []
    for folder in [*user, stock_devices_dir()]:
        if folder.resolve() not in [d.resolve() for d in dirs]:
            dirs.append(folder)
    return dirs


def _files(dirs: Sequence[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in dirs:
        for f in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            found.setdefault(f.stem, f)
    return found


def list_profiles(devices_dir: Path | str | None = None) -> list[DeviceProfile]:
    """Every profile on the search path, sorted by name (a user's file overrides a stock one)."""
    return [_read_in_dir(p) for _, p in sorted(_files(devices_path(devices_dir)).items())]


def load_profile(name_or_path: str | Path, devices_dir: Path | str | None = None) -> DeviceProfile:
    """A profile by name (searched on :func:`devices_path`) or by path to a YAML file."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text:
        p = Path(text)
        if not p.is_file():
            raise NotFoundError(f"device profile not found: {p}")
        return _read(p)
    files = _files(devices_path(devices_dir))
    if text not in files:
        known = ", ".join(sorted(files)) or "none"
        raise NotFoundError(f"unknown target {text!r} (known: {known}; or give a path to a .yaml file)")
    return _read_in_dir(files[text])
