"""Loading data: every bad input gives a one-line message and exit code 2; good input loads alike.

Bad-input cases run ``edgeml train`` on a small recipe in ``tmp_path`` through the real CLI
entry point (``edgeml.cli.main``, in-process for speed); a few also run as a subprocess.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from edgeml.cli import main
from edgeml.errors import DataError
from edgeml.train.data import feature_schema, infer_kind, load_dataset
from edgeml.train.recipe import DataSpec

CSV_OK = "a,b,y\n1,x,u\n2,y,v\n3,x,u\n4,y,v\n"


def write_recipe(tmp_path: Path, data: dict[str, Any], task: str = "classification") -> Path:
    recipe = {
        "name": "t",
        "task": task,
        "data": data,
        "split": {"cv": 2, "holdout": 0.25},
        "candidates": [{"family": "isolation_forest" if task == "anomaly" else
                        "ridge" if task == "regression" else "logistic_regression"}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _sqlite(path: Path, frame: pd.DataFrame, table: str = "t") -> None:
    con = sqlite3.connect(path)
    frame.to_sql(table, con, index=False)
    con.close()


# (id, files to write {name: text|bytes|callable}, data section, task, expected message parts)
BAD_CASES: list[tuple[str, dict[str, Any], dict[str, Any], str, list[str]]] = [
    ("missing-file", {}, {"source": "nope.csv", "target": "y"}, "classification",
     ["data file not found", "nope.csv"]),
    ("unknown-format", {"d.xlsx": b"PK\x03\x04junk"}, {"source": "d.xlsx", "target": "y"},
     "classification", ["unknown data format '.xlsx'", "supported: .csv", ".parquet", ".jsonl"]),
    ("missing-target", {"d.csv": "a,b\n1,2\n"}, {"source": "d.csv", "target": "species"},
     "classification", ["target column 'species' not found", "columns: a, b"]),
    ("header-only", {"d.csv": "a,y\n"}, {"source": "d.csv", "target": "y"}, "classification",
     ["d.csv: no rows"]),
    ("zero-bytes", {"d.csv": ""}, {"source": "d.csv", "target": "y"}, "classification",
     ["d.csv is empty"]),
    ("all-targets-missing", {"d.csv": "a,y\n1,\n2,\n"}, {"source": "d.csv", "target": "y"},
     "classification", ["no rows left after dropping 2 row(s) with a missing target 'y'"]),
    ("single-class", {"d.csv": "a,y\n1,u\n2,u\n3,u\n"}, {"source": "d.csv", "target": "y"},
     "classification", ["target 'y' has a single class ('u')", "at least two"]),
    ("all-missing-column", {"d.csv": "a,c,y\n1,,u\n2,,v\n"}, {"source": "d.csv", "target": "y"},
     "classification", ["column 'c' has no values (all missing)", "drop: [c]"]),
    ("non-numeric", {"d.csv": "a,y\n1,u\n2,v\nabc,u\n"},
     {"source": "d.csv", "target": "y", "columns": {"a": "numeric"}}, "classification",
     ["column 'a' is declared numeric", "'abc' in row 3"]),
    ("non-numeric-regression-target", {"d.csv": "a,y\n1,2.5\n2,n/a?\n"},
     {"source": "d.csv", "target": "y"}, "regression",
     ["column 'y' is the regression target", "'n/a?' in row 2"]),
    ("anomaly-label-not-0-1", {"d.csv": "a,y\n1,ok\n2,bad\n"}, {"source": "d.csv", "target": "y"},
     "anomaly", ["anomaly target 'y' must hold 0 (normal) or 1 (anomaly)", "found: bad, ok"]),
    ("corrupt-parquet", {"d.parquet": b"this is not parquet at all"},
     {"source": "d.parquet", "target": "y"}, "classification", ["cannot read", "as parquet"]),
    ("corrupt-jsonl", {"d.jsonl": '{"a": 1, "y": "u"}\n{"a": 2, "y": \n'},
     {"source": "d.jsonl", "target": "y"}, "classification", ["cannot read", "as jsonl"]),
    ("corrupt-sqlite", {"d.db": b"garbage" * 200}, {"source": "sqlite:d.db", "table": "t", "target": "y"},
     "classification", ["cannot read", "as SQLite"]),
    ("sqlite-unknown-table", {"d.db": lambda p: _sqlite(p, pd.DataFrame({"a": [1], "y": ["u"]}))},
     {"source": "sqlite:d.db", "table": "nope", "target": "y"}, "classification",
     ["no table 'nope'", "tables: t"]),
    ("sqlite-no-table-or-query", {"d.db": lambda p: _sqlite(p, pd.DataFrame({"a": [1], "y": ["u"]}))},
     {"source": "d.db", "target": "y"}, "classification", ["needs data.table or data.query", "tables: t"]),
    ("drop-unknown-column", {"d.csv": CSV_OK}, {"source": "d.csv", "target": "y", "drop": ["zzz"]},
     "classification", ["data.drop names column(s) not in the data: zzz", "columns: a, b, y"]),
    ("unknown-sklearn-dataset", {}, {"source": "sklearn:cifar10", "target": "target"},
     "classification", ["unknown scikit-learn dataset 'sklearn:cifar10'", "sklearn:iris"]),
]


def _materialize(tmp_path: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        p = tmp_path / name
        if callable(content):
            content(p)
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)


@pytest.mark.parametrize(("files", "data", "task", "expected"),
                         [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_data_exits_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       files: dict[str, Any], data: dict[str, Any], task: str,
                                       expected: list[str]) -> None:
    _materialize(tmp_path, files)
    recipe = write_recipe(tmp_path, data, task)
    code, _out, err = run_main(["train", str(recipe), "--registry", str(tmp_path / "reg")], capsys)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for part in expected:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert "Traceback" not in err
    assert not (tmp_path / "reg" / "t").exists() or not any((tmp_path / "reg" / "t").iterdir())


@pytest.mark.parametrize("case", ["missing-file", "non-numeric", "missing-target"])
def test_bad_data_through_a_real_process(tmp_path: Path, case: str) -> None:
    _, files, data, task, expected = next(c for c in BAD_CASES if c[0] == case)
    _materialize(tmp_path, files)
    recipe = write_recipe(tmp_path, data, task)
    proc = subprocess.run([sys.executable, "-m", "edgeml", "train", str(recipe), "--registry",
                           str(tmp_path / "reg")], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    for part in expected:
        assert part in proc.stderr


def test_override_names_the_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d.csv").write_text(CSV_OK)
    recipe = write_recipe(tmp_path, {"source": "d.csv", "target": "y"})
    code, _, err = run_main(["train", str(recipe), "--registry", str(tmp_path / "r"),
                             "--data", str(tmp_path / "other.csv")], capsys)
    assert code == 2
    assert f"data file not found: {tmp_path / 'other.csv'}" in err


def test_missing_targets_are_dropped_and_counted_in_model_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    y = np.where(rng.random(60) < 0.5, "u", "v").astype(object)
    frame = pd.DataFrame({"a": rng.normal(size=60) + (y == "u") * 3, "y": y})
    frame.loc[[3, 17, 40], "y"] = None
    frame.to_csv(tmp_path / "d.csv", index=False)
    recipe = write_recipe(tmp_path, {"source": "d.csv", "target": "y"})
    code, _, err = run_main(["train", str(recipe), "--registry", str(tmp_path / "reg")], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "reg" / "t" / "1" / "model.json").read_text())
    assert meta["data"]["rows"] == 60
    assert meta["data"]["dropped_missing_target"] == 3
    assert meta["data"]["rows_used"] == 57


def _formats(tmp_path: Path, frame: pd.DataFrame) -> dict[str, DataSpec]:
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    _sqlite(tmp_path / "d.db", frame, "readings")
    common: dict[str, Any] = {"target": "y", "drop": ["skip"]}
    return {
        "csv": DataSpec(source="d.csv", **common),
        "tsv": DataSpec(source="d.tsv", **common),
        "parquet": DataSpec(source="d.parquet", **common),
        "jsonl": DataSpec(source="d.jsonl", **common),
        "sqlite-table": DataSpec(source="sqlite:d.db", table="readings", **common),
        "sqlite-query": DataSpec(source="sqlite:d.db", query="SELECT * FROM readings", **common),
    }


def test_every_source_format_loads_to_the_same_frame(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "temp": [20.5, None, 22.0, 23.5, 19.0],
        "count": [1, 2, None, 4, 5],
        "site": ["north", None, "south", "north", "east"],
        "skip": [1, 2, 3, 4, 5],
        "y": ["ok", "bad", "ok", None, "ok"],
    })
    loaded = {k: load_dataset(s, tmp_path, task="classification") for k, s in _formats(tmp_path, frame).items()}
    first = loaded["csv"]
    assert first.kinds == {"temp": "numeric", "count": "numeric", "site": "categorical"}
    assert list(first.frame.columns) == ["temp", "count", "site", "y"]
    assert first.frame["temp"].dtype == np.float64 and first.frame["count"].dtype == np.float64
    assert first.frame["site"].dtype == object and first.frame["site"].tolist() == ["north", "", "south", "east"]
    assert first.frame["y"].tolist() == ["ok", "bad", "ok", "ok"]
    assert (first.rows, first.dropped_missing_target) == (5, 1)
    for name, ds in loaded.items():
        pd.testing.assert_frame_equal(ds.frame, first.frame, obj=name)
        assert ds.kinds == first.kinds, name
    # files hash by their bytes; SQLite results by their canonical CSV serialization
    import hashlib

    assert loaded["parquet"].sha256 == hashlib.sha256((tmp_path / "d.parquet").read_bytes()).hexdigest()
    assert len({loaded[k].sha256 for k in ("csv", "tsv", "parquet", "jsonl")}) == 4
    assert loaded["sqlite-table"].sha256 == loaded["sqlite-query"].sha256 == loaded["csv"].sha256


def test_sklearn_classification_targets_are_class_names() -> None:
    ds = load_dataset(DataSpec(source="sklearn:iris", target="target"), Path("."), task="classification")
    assert ds.rows == 150 and len(ds.kinds) == 4
    assert sorted(ds.frame["target"].unique()) == ["setosa", "versicolor", "virginica"]
    again = load_dataset(DataSpec(source="sklearn:iris", target="target"), Path("."), task="classification")
    assert ds.sha256 == again.sha256 and ds.source == "sklearn:iris"
    reg = load_dataset(DataSpec(source="sklearn:diabetes", target="target"), Path("."), task="regression")
    assert reg.frame["target"].dtype == np.float64


def test_numeric_class_codes_become_strings(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,y\n1,0\n2,1\n3,\n4,1\n")
    ds = load_dataset(DataSpec(source="d.csv", target="y"), tmp_path, task="classification")
    assert ds.frame["y"].tolist() == ["0", "1", "1"]
    anomaly = load_dataset(DataSpec(source="d.csv", target="y"), tmp_path, task="anomaly")
    assert anomaly.frame["y"].dtype == np.int64 and anomaly.frame["y"].tolist() == [0, 1, 1]


def test_kind_inference() -> None:
    n = 200
    rng = np.random.default_rng(1)
    assert infer_kind(pd.Series(rng.normal(size=n))) == "numeric"
    assert infer_kind(pd.Series([True, False] * 5)) == "numeric"
    assert infer_kind(pd.Series(["a", "b", "c"] * 60)) == "categorical"
    assert infer_kind(pd.Series([f"serial-{i}" for i in range(n)])) == "categorical"
    words = ["printer", "broken", "again", "cannot", "print", "network", "slow", "today"]
    texts = [" ".join(rng.choice(words, 7)) + f" #{i}" for i in range(n)]
    assert infer_kind(pd.Series(texts)) == "text"
    codes = pd.DataFrame({"code": [1.0, 2.0, None] * 2, "y": ["a", "b"] * 3})
    assert load_from_frame(codes, {}).kinds == {"code": "numeric"}
    declared = load_from_frame(codes, {"code": "categorical"})
    assert declared.kinds == {"code": "categorical"}
    assert declared.frame["code"].tolist() == ["1", "2", "", "1", "2", ""]


def load_from_frame(frame: pd.DataFrame, columns: dict[str, str]) -> Any:
    from edgeml.train.data import prepare
    from edgeml.train.sources import RawData

    spec = DataSpec(source="mem", target="y", columns=columns)  # type: ignore[arg-type]
    return prepare(RawData(frame, "mem", "0"), spec, task="classification")


def test_feature_schema_describes_the_training_frame(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("t,site,note,y\n1.5,b,,u\n,a,hello there,v\n3.0,b,x,u\n")
    spec = DataSpec(source="d.csv", target="y", columns={"note": "text"})
    ds = load_dataset(spec, tmp_path, task="classification")
    schema = feature_schema(ds.frame, ds.kinds)
    assert schema == [
        {"name": "t", "kind": "numeric", "dtype": "float32", "nullable": True,
         "categories": None, "min": 1.5, "max": 3.0},
        {"name": "site", "kind": "categorical", "dtype": "string", "nullable": True,
         "categories": ["a", "b"], "min": None, "max": None},
        {"name": "note", "kind": "text", "dtype": "string", "nullable": True,
         "categories": None, "min": None, "max": None},
    ]


def test_errors_are_data_errors_in_the_library(tmp_path: Path) -> None:
    call: Callable[[], Any] = lambda: load_dataset(  # noqa: E731
        DataSpec(source="gone.parquet", target="y"), tmp_path, task="classification")
    with pytest.raises(DataError, match=r"data file not found: .*gone\.parquet"):
        call()
