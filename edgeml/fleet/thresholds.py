"""Thresholds of the fleet evaluator, from a small YAML file (``thresholds.yaml`` documents it).

:func:`load_thresholds` reads a file (or the packaged default) into :class:`Thresholds`;
:meth:`Thresholds.rules` merges ``defaults`` < ``fleets[fleet]`` < ``models[name]`` <
``models["name@version"]`` key by key into the :class:`Rules` for one judgement. Errors
name the file and the key (exit 2).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgeml.errors import UsageError

__all__ = ["DEFAULT_FILE", "Level", "Rules", "Thresholds", "load_thresholds", "parse_duration"]

DEFAULT_FILE = "thresholds.yaml"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any, where: str = "duration") -> float:
    """``90``, ``"90s"``, ``"10m"``, ``"1h"`` -> seconds (> 0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise UsageError(f"{where}: {value!r} is not a duration (e.g. 90, 90s, 10m, 1h)")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not seconds > 0:
        raise UsageError(f"{where}: {value!r} must be > 0")
    return seconds


@dataclass(frozen=True)
class Level:
    """Watch and alert thresholds of one statistic (None: that level is off)."""

    watch: float | None = None
    alert: float | None = None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass(frozen=True)
class Rules:
    """The merged thresholds for one (fleet, model) judgement."""

    raw: dict[str, Any]
    where: str

    def _level(self, raw: Any, where: str) -> Level:
        if raw is None:
            return Level()
        if not isinstance(raw, dict) or set(raw) - {"watch", "alert"}:
            raise UsageError(f"{self.where}: {where}: expected {{watch: x, alert: y}}")
        values = []
        for key in ("watch", "alert"):
            v = raw.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise UsageError(f"{self.where}: {where}.{key}: expected a number, got {v!r}")
            values.append(None if v is None else float(v))
        return Level(values[0], values[1])

    def drift(self, kind: str) -> dict[str, Level]:
        """statistic name -> Level for a feature kind (numeric, categorical, text, prediction)."""
        from edgeml.fleet import stattests

        section = (self.raw.get("drift") or {}).get(kind) or {}
        if not isinstance(section, dict):
            raise UsageError(f"{self.where}: drift.{kind}: expected a mapping of statistic -> levels")
        out: dict[str, Level] = {}
        for name, levels in section.items():
            test = stattests.get(str(name))
            if kind not in test.kinds:
                raise UsageError(f"{self.where}: drift.{kind}.{name}: {name} does not accept "
                                 f"{kind} features (it takes {', '.join(sorted(test.kinds))})")
            out[str(name)] = self._level(levels, f"drift.{kind}.{name}")
        return out

    def level(self, key: str) -> Level:
        return self._level(self.raw.get(key), key)

    def value(self, section: str, key: str) -> float:
        raw = (self.raw.get(section) or {}).get(key)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise UsageError(f"{self.where}: {section}.{key}: expected a number, got {raw!r}")
        return float(raw)


@dataclass(frozen=True)
class Thresholds:
    """A parsed thresholds file."""

    window_s: float
    min_rows: int
    min_labels: int
    defaults: dict[str, Any]
    fleets: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = DEFAULT_FILE
    retrain: Any = None  # edgeml.fleet.retrain_trigger.RetrainConfig of a retrain: section

    def rules(self, fleet: str | None = None, model: str | None = None,
              version: int | None = None) -> Rules:
        raw = self.defaults
        if fleet is not None and fleet in self.fleets:
            raw = _merge(raw, self.fleets[fleet])
        if model is not None:
            for key in (model, f"{model}@{version}"):
                if key in self.models:
                    raw = _merge(raw, self.models[key])
        return Rules(raw, self.source)

    def with_window(self, seconds: float) -> Thresholds:
        return Thresholds(seconds, self.min_rows, self.min_labels, self.defaults, self.fleets,
                          self.models, self.source, self.retrain)

    @classmethod
    def from_dict(cls, raw: Any, source: str, base: dict[str, Any] | None = None) -> Thresholds:
        if not isinstance(raw, dict):
            raise UsageError(f"{source}: expected a mapping at the top level")
        known = {"window", "min_rows", "min_labels", "defaults", "fleets", "models", "retrain"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UsageError(f"{source}: {unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        from edgeml.fleet.retrain_trigger import parse_retrain

        base = base or {}
        merged = _merge(base, raw)
        retrain = parse_retrain(raw.get("retrain"), source)  # the automatic retraining trigger

        def count(key: str) -> int:
            v = merged.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UsageError(f"{source}: {key}: expected a count >= 0, got {v!r}")
            return v

        for key in ("defaults", "fleets", "models"):
            if not isinstance(merged.get(key) or {}, dict):
                raise UsageError(f"{source}: {key}: expected a mapping")
        out = cls(window_s=parse_duration(merged.get("window", "1h"), f"{source}: window"),
                  min_rows=count("min_rows"), min_labels=count("min_labels"),
                  defaults=merged.get("defaults") or {}, fleets=merged.get("fleets") or {},
                  models=merged.get("models") or {}, source=source, retrain=retrain)
        # validate every section now, not at the first evaluation
        scopes = [out.rules(), *(out.rules(fleet=f) for f in out.fleets),
                  *(out.rules(model=m.partition("@")[0], version=_version(m)) for m in out.models)]
        for rules in scopes:
            for kind in ("numeric", "categorical", "text", "prediction"):
                rules.drift(kind)
            for key in ("missing_rate_rise", "out_of_range_rate"):
                rules.level(key)
            for section, key in (("decay", "accuracy_drop"), ("decay", "mae_ratio"),
                                 ("decay", "confidence"), ("health", "silent_windows"),
                                 ("health", "error_rate"), ("health", "min_requests"),
                                 ("health", "p95_ms"), ("health", "lost_windows"),
                                 ("health", "spool_drops")):
                rules.value(section, key)
        return out


def _version(key: str) -> int | None:
    _, sep, version = key.partition("@")
    return int(version) if sep and version.isdigit() else None


def _default_raw() -> dict[str, Any]:
    import yaml

    text = resources.files("edgeml.fleet").joinpath(DEFAULT_FILE).read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    assert isinstance(raw, dict)
    return raw


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    """The packaged defaults, overridden key by key by the file at ``path`` (if given)."""
    import yaml

    base = _default_raw()
    if path is None:
        return Thresholds.from_dict(base, DEFAULT_FILE)
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise UsageError(f"{p}: cannot read the thresholds file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    return Thresholds.from_dict(raw, str(p), base)
