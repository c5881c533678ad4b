"""The model registry: ``<root>/<name>/<version>/`` folders, versions 1, 2, 3... never overwritten.

Each version holds ``model.json`` (:mod:`edgeml.train.model_json`, validated whenever an
entry is read), ``pipeline.joblib`` (host only), ``holdout.parquet`` (raw feature frame +
target column) and ``report.html``. A version is built in ``<root>/<name>/.tmp-<random>/``,
every file and the folder are fsynced, and it is renamed into place in one ``os.rename``
(then the parent folder is fsynced); when another process took that number first, the
folder is rebuilt for the next number. Readers never see a half-written version, and a
power cut never leaves a version folder with empty files.

References: ``name`` (latest version), ``name@3``, or ``name@champion`` (an alias).

Aliases (``champion``, ``challenger``, as MLflow names them; any ``[a-z][a-z0-9-]*``) map a
name to one version of a model. They live in ``<root>/<name>/aliases.json``
(``{"champion": 1, "challenger": 2}``), replaced atomically on every change.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from edgeml._files import atomic_rename_dir
from edgeml.errors import NotFoundError, RegistryError, UsageError
from edgeml.train.model_json import ModelJson, read_model_json

__all__ = ["Entry", "Registry", "check_alias", "compare_entries", "parse_ref", "summarize_entry"]

MODEL_JSON = "model.json"
PIPELINE = "pipeline.joblib"
HOLDOUT = "holdout.parquet"
REPORT = "report.html"
ALIASES = "aliases.json"
REF_RE = re.compile(r"^([a-z0-9][a-z0-9-]*)(?:@([0-9]+))?$")
ALIAS_REF_RE = re.compile(r"^([a-z0-9][a-z0-9-]*)@([a-z][a-z0-9-]{0,62})$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"name"`` -> ``(name, None)``; ``"name@3"`` -> ``(name, 3)``."""
    m = REF_RE.match(ref.strip())
    if not m:
        raise UsageError(f"invalid model reference {ref!r}; expected NAME, NAME@VERSION or "
                         "NAME@ALIAS")
    return m.group(1), int(m.group(2)) if m.group(2) else None


def check_alias(alias: str) -> str:
    """An alias name (``champion``, ``challenger``...): ``[a-z][a-z0-9-]*``, not a number."""
    if not ALIAS_RE.match(alias):
        raise UsageError(f"invalid alias {alias!r}: use lowercase letters, digits and '-', "
                         "starting with a letter (e.g. champion, challenger)")
    return alias


@dataclass(frozen=True)
class Entry:
    """One registered model version."""

    name: str
    version: int
    path: Path
    record: ModelJson  # the validated model.json

    @cached_property
    def meta(self) -> dict[str, Any]:
        """``model.json`` as plain JSON values (validated, defaults filled in)."""
        return self.record.to_dict()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def file(self, key: str) -> Path:
        """Path of a file named in model.json ``files`` (pipeline, holdout, report)."""
        default = {"pipeline": PIPELINE, "holdout": HOLDOUT, "report": REPORT}.get(key, key)
        return self.path / str(getattr(self.record.files, key, default))

    def load_pipeline(self) -> Any:
        """The fitted scikit-learn pipeline (host only: this unpickles)."""
        import joblib

        p = self.file("pipeline")
        try:
            return joblib.load(p)
        except FileNotFoundError as exc:
            raise RegistryError(f"{self.ref}: {p.name} is missing") from exc
        except Exception as exc:  # corrupted or from an incompatible scikit-learn
            raise RegistryError(f"{self.ref}: cannot load {p.name}: {exc}") from exc

    def load_holdout(self) -> tuple[pd.DataFrame, pd.Series | None]:
        """Holdout features (raw feature frame, ``features`` order and dtypes) and target."""
        p = self.file("holdout")
        try:
            frame = pd.read_parquet(p)
        except FileNotFoundError as exc:
            raise RegistryError(f"{self.ref}: {p.name} is missing") from exc
        except Exception as exc:
            raise RegistryError(f"{self.ref}: cannot read {p.name}: {exc}") from exc
        features = self.record.features
        cols = [f.name for f in features]
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise RegistryError(f"{self.ref}: {p.name} lacks feature columns {missing}")
        X = pd.DataFrame(index=frame.index)
        for f in features:
            col = frame[f.name]
            if f.kind == "numeric":
                X[f.name] = col.astype("float64")
            else:
                X[f.name] = pd.Series(
                    ["" if pd.isna(v) else str(v) for v in col], index=frame.index, dtype=object
                )
        target = self.record.target.name
        y = frame[target] if target and target in frame.columns else None
        if y is not None and self.record.target.classes is not None:
            y = pd.Series([str(v) for v in y], index=frame.index, dtype=object, name=target)
        return X, y


def _read_record(folder: Path, name: str, version: int) -> ModelJson:
    path = folder / MODEL_JSON
    record = read_model_json(path)
    if (record.name, record.version) != (name, version):
        raise RegistryError(f"{path}: name/version: says {record.ref}, but the folder is "
                            f"{name}@{version}")
    return record


class Registry:
    """A folder of registered models."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and REF_RE.match(p.name))

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if p.name.isdigit() and (p / MODEL_JSON).is_file()
        )

    def _entry(self, name: str, version: int) -> Entry:
        path = self.root / name / str(version)
        return Entry(name=name, version=version, path=path, record=_read_record(path, name, version))

    def list(self, name: str | None = None) -> list[Entry]:
        """Every entry (or every version of ``name``), sorted by name then version."""
        names = [name] if name is not None else self.names()
        return [self._entry(n, v) for n in names for v in self.versions(n)]

    def _available(self) -> str:
        parts = [f"{n} ({', '.join(map(str, self.versions(n)))})" for n in self.names()]
        parts = [p for p in parts if not p.endswith("()")]
        return "; ".join(parts) if parts else "nothing registered yet"

    # -- aliases -------------------------------------------------------------

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` of ``name`` (empty when none was set)."""
        import json

        path = self.root / name / ALIASES
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RegistryError(f"unreadable {path}: {exc}") from exc
        if not isinstance(raw, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in raw.items()):
            raise RegistryError(f"{path}: must be a JSON object of alias -> version")
        return dict(sorted(raw.items()))

    def set_alias(self, name: str, alias: str, version: int | None) -> dict[str, int]:
        """Point ``alias`` of ``name`` at ``version`` (None: remove it); the new aliases.

        The file is replaced atomically; the version must exist.
        """
        import json

        from edgeml._files import atomic_write

        check_alias(alias)
        if version is not None:
            self.resolve(f"{name}@{version}")  # exists and readable
        current = self.aliases(name)
        if version is None:
            current.pop(alias, None)
        else:
            current[alias] = version
        blob = json.dumps(dict(sorted(current.items())), indent=2, sort_keys=True) + "\n"
        atomic_write(self.root / name / ALIASES, blob)
        return current

    def aliases_of(self, entry: Entry) -> tuple[str, ...]:
        """The aliases pointing at ``entry``."""
        return tuple(a for a, v in self.aliases(entry.name).items() if v == entry.version)

    def resolve(self, ref: str) -> Entry:
        """The entry for ``name`` (latest version), ``name@version`` or ``name@alias``."""
        m = ALIAS_REF_RE.match(ref.strip())
        if m:
            name, alias = m.group(1), m.group(2)
            known = self.aliases(name)
            if alias not in known:
                shown = ", ".join(f"{a} -> {v}" for a, v in known.items()) or "none set"
                raise NotFoundError(f"{name}@{alias}: no such alias in registry {self.root} "
                                    f"(aliases of {name}: {shown}; set one with "
                                    f"edgeml models alias {name}@VERSION {alias})")
            ref = f"{name}@{known[alias]}"
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            raise NotFoundError(
                f"no model {name!r} in registry {self.root}; available: {self._available()}"
            )
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise NotFoundError(
                f"{name}@{version} not found in registry {self.root}; versions of {name}: "
                + ", ".join(map(str, versions))
            )
        return self._entry(name, version)

    def register(self, name: str, write: Callable[[Path, int], None]) -> Entry:
        """Create the next version of ``name``: ``write(folder, version)`` fills the folder.

        The folder is a temporary one; it becomes ``<root>/<name>/<version>`` atomically.
        If ``write`` raises, nothing is registered and the temporary folder is removed.
        """
        parse_ref(name)
        base = self.root / name
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(f"cannot create {base}: {exc}") from exc
        for _attempt in range(100):
            version = max(self.versions(name) + [int(p.name) for p in base.iterdir()
                                                  if p.name.isdigit()], default=0) + 1
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a version folder is not
            try:
                write(tmp, version)
                if not (tmp / MODEL_JSON).is_file():
                    raise RegistryError(f"registering {name}: no {MODEL_JSON} was written")
                _read_record(tmp, name, version)  # never register an entry readers refuse
                try:
                    atomic_rename_dir(tmp, base / str(version))
                except OSError:
                    if (base / str(version)).exists():
                        continue  # someone else took this number: rebuild for the next one
                    raise
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            return self._entry(name, version)
        raise RegistryError(f"could not allocate a version folder under {base}")


def summarize_entry(entry: Entry) -> dict[str, Any]:
    """The stable one-line summary used by ``edgeml models list``."""
    r = entry.record
    return {
        "ref": entry.ref,
        "name": entry.name,
        "version": entry.version,
        "task": r.task,
        "created_at": r.created_at,
        "family": r.model.family,
        "scoring": r.model.scoring,
        "cv_mean": r.model.cv_mean,
        "primary": r.metrics.primary,
        "holdout": r.holdout_scalars(),
        "data_sha256": r.data.sha256,
        "path": str(entry.path),
    }


def _diff(a: Any, b: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"a": a, "b": b, "same": a == b}
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        out["delta"] = b - a
    return out


def compare_entries(a: Entry, b: Entry) -> dict[str, Any]:
    """Side-by-side comparison of two entries and the list of what differs."""
    ra, rb = a.record, b.record
    met_a, met_b = ra.holdout_scalars(), rb.holdout_scalars()
    par_a, par_b = ra.model.params, rb.model.params
    sections: dict[str, dict[str, Any]] = {
        "metrics": {k: _diff(met_a.get(k), met_b.get(k)) for k in sorted({*met_a, *met_b})},
        "params": {k: _diff(par_a.get(k), par_b.get(k)) for k in sorted({*par_a, *par_b})},
    }

    def facts(r: ModelJson) -> dict[str, Any]:
        return {
            "task": r.task,
            "family": r.model.family,
            "scoring": r.model.scoring,
            "cv_mean": r.model.cv_mean,
            "data_sha256": r.data.sha256,
            "data_rows": r.data.rows_used,
            "recipe_sha256": r.recipe_sha256,
            "features": [f.name for f in r.features],
        }

    fa, fb = facts(ra), facts(rb)
    sections["general"] = {k: _diff(fa[k], fb[k]) for k in fa}
    differences = [f"{sec}.{k}" for sec in ("general", "params", "metrics")
                   for k, v in sections[sec].items() if not v["same"]]
    return {"a": a.ref, "b": b.ref, **sections, "differences": differences}
