"""Reading data sources into a raw pandas frame (no cleaning yet; see ``edgeml.train.data``).

Source forms (``data.source`` in a recipe, or ``--data PATH``)::

    data/x.csv  data/x.tsv            comma / tab separated, header row
    data/x.parquet  data/x.pq         Apache Parquet
    data/x.jsonl  data/x.ndjson       one JSON object per line
    sqlite:data/x.db                  SQLite file, with data.table or data.query
    data/x.db  data/x.sqlite          (same, recognised by extension)
    sklearn:iris                      a dataset bundled with scikit-learn (offline)

Relative paths are resolved against the recipe's folder. Every failure is a
one-line :class:`~edgeml.errors.DataError`.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from edgeml.errors import DataError
from edgeml.train.recipe import DataSpec

__all__ = ["EXTENSIONS", "SKLEARN_DATASETS", "RawData", "read_source", "sqlite_tables"]

EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".db": "sqlite",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
}
SKLEARN_DATASETS = ("iris", "wine", "breast_cancer", "diabetes", "digits", "linnerud")
SUPPORTED = (
    ".csv, .tsv, .parquet, .pq, .jsonl, .ndjson, .db/.sqlite/.sqlite3 "
    "(or sqlite:FILE with data.table/data.query), sklearn:NAME"
)


@dataclass(frozen=True, eq=False)
class RawData:
    """A source read as-is. ``label_names`` maps an integer-coded column to its class names."""

    frame: pd.DataFrame
    source: str
    sha256: str
    label_names: dict[str, list[str]] = field(default_factory=dict)


def _frame_sha256(frame: pd.DataFrame) -> str:
    """Hash of a canonical serialization (CSV, ``\\n`` line ends) of a frame."""
    blob = frame.to_csv(index=False, lineterminator="\n").encode()
    return hashlib.sha256(blob).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _read_sklearn(name: str) -> RawData:
    if name not in SKLEARN_DATASETS:
        raise DataError(
            f"unknown scikit-learn dataset 'sklearn:{name}'; bundled (offline) ones: "
            + ", ".join(f"sklearn:{n}" for n in SKLEARN_DATASETS)
        )
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.copy()
    label_names: dict[str, list[str]] = {}
    names = getattr(bunch, "target_names", None)
    if "target" in frame.columns and names is not None and pd.api.types.is_integer_dtype(
        frame["target"]
    ):
        label_names["target"] = [str(n) for n in names]
    return RawData(frame, f"sklearn:{name}", _frame_sha256(frame), label_names)


def _sqlite_tables(con: sqlite3.Connection) -> list[str]:
    rows = con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name")
    return [r[0] for r in rows]


def sqlite_tables(path: Path) -> list[str]:
    """Tables and views of a SQLite file ([] when it cannot be read)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return _sqlite_tables(con)
        finally:
            con.close()
    except sqlite3.Error:
        return []


def _read_sqlite(path: Path, spec: DataSpec, source: str) -> RawData:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise DataError(f"cannot open {path} as SQLite: {_first_line(exc)}") from exc
    try:
        try:
            tables = _sqlite_tables(con)
        except sqlite3.DatabaseError as exc:
            raise DataError(f"cannot read {path} as SQLite: {_first_line(exc)}") from exc
        if spec.query:
            sql, what = spec.query, f"query on {path}"
        elif spec.table:
            if spec.table not in tables:
                raise DataError(
                    f"{path}: no table '{spec.table}'; tables: {', '.join(tables) or '(none)'}"
                )
            sql, what = 'SELECT * FROM "{}"'.format(spec.table.replace('"', '""')), str(path)
        else:
            raise DataError(
                f"{path}: a SQLite source needs data.table or data.query; "
                f"tables: {', '.join(tables) or '(none)'}"
            )
        try:
            frame = pd.read_sql_query(sql, con)
        except (sqlite3.Error, pd.errors.DatabaseError, ValueError) as exc:
            raise DataError(f"{what} failed: {_first_line(exc)}") from exc
    finally:
        con.close()
    detail = f"query={spec.query}" if spec.query else f"table={spec.table}"
    return RawData(frame, f"{source} ({detail})", _frame_sha256(frame))


def _read_file(path: Path, fmt: str) -> pd.DataFrame:
    try:
        if fmt == "csv":
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            return pd.read_csv(path, sep=sep)
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, convert_dates=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty (no header row)") from exc
    except (ValueError, OSError, UnicodeError) as exc:
        raise DataError(f"cannot read {path} as {fmt}: {_first_line(exc)}") from exc
    raise DataError(f"unknown data format '{fmt}'; supported: {SUPPORTED}")  # pragma: no cover


def _format_of(path: Path, declared: str) -> str:
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None and declared not in ("auto", "sklearn"):
        fmt = declared
    if fmt is None:
        ext = path.suffix or "(no extension)"
        raise DataError(f"unknown data format '{ext}' for {path}; supported: {SUPPORTED}")
    return fmt


def read_source(spec: DataSpec, base_dir: Path, override: Path | None = None) -> RawData:
    """Read the source of ``spec`` (or ``override``, which replaces its file) without cleaning."""
    raw_source = str(override) if override is not None else spec.source
    if override is None and (spec.format == "sklearn" or spec.source.startswith("sklearn:")):
        return _read_sklearn(spec.source.removeprefix("sklearn:"))
    if raw_source.startswith("sklearn:"):
        return _read_sklearn(raw_source.removeprefix("sklearn:"))
    text = raw_source
    forced_sqlite = text.startswith("sqlite:")
    if forced_sqlite:
        text = text.removeprefix("sqlite:")
        text = text[2:] if text.startswith("///") else text
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (base_dir / path) if override is None else path
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"data source is a directory, not a file: {path}")
    fmt = "sqlite" if forced_sqlite else _format_of(path, spec.format)
    if fmt == "sqlite":
        return _read_sqlite(path, spec, raw_source)
    frame = _read_file(path, fmt)
    return RawData(frame, raw_source, _file_sha256(path))
