"""The model registry: increasing versions, never overwritten, atomic; refs; list/compare."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from edgeml.errors import NotFoundError, RegistryError, UsageError
from edgeml.train.registry import Registry, compare_entries, parse_ref, summarize_entry

FEATURES = [
    {"name": "x", "kind": "numeric", "dtype": "float32", "nullable": True, "categories": None,
     "min": 0.0, "max": 1.0},
    {"name": "c", "kind": "categorical", "dtype": "string", "nullable": True,
     "categories": ["a", "b"], "min": None, "max": None},
]


def _meta(name: str, version: int, **over: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "schema_version": 1, "name": name, "version": version, "task": "classification",
        "created_at": "2026-11-28T17:00:00Z",
        "model": {"family": "knn", "params": {"n_neighbors": 3}, "cv_mean": 0.9, "cv_std": 0.01,
                  "scoring": "f1_macro"},
        "data": {"sha256": "aa" * 32, "rows_used": 10},
        "recipe_sha256": "r1",
        "metrics": {"holdout": {"accuracy": 0.9, "f1_macro": 0.88, "confusion_matrix": [[1]]}},
        "features": FEATURES,
        "target": {"name": "label", "classes": ["1", "2"]},
        "files": {"pipeline": "pipeline.joblib", "holdout": "holdout.parquet",
                  "report": "report.html"},
    }
    for key, value in over.items():
        meta[key] = value
    return meta


def _writer(name: str, **over: Any) -> Any:
    def write(folder: Path, version: int) -> None:
        (folder / "model.json").write_text(json.dumps(_meta(name, version, **over)))
        X = pd.DataFrame({"x": [0.5, np.nan], "c": ["a", ""], "label": [1, 2]})
        X.to_parquet(folder / "holdout.parquet")
        joblib.dump(DummyClassifier().fit([[0]], ["1"]), folder / "pipeline.joblib")

    return write


def test_versions_increase_and_are_never_overwritten(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    e1 = reg.register("m", _writer("m"))
    first = (e1.path / "model.json").read_text()
    e2 = reg.register("m", _writer("m"))
    assert (e1.version, e2.version) == (1, 2)
    assert e2.meta["version"] == 2 and (e1.path / "model.json").read_text() == first
    assert [p.name for p in sorted((tmp_path / "reg" / "m").iterdir())] == ["1", "2"]
    assert oct(e2.path.stat().st_mode & 0o777) == oct(0o755)
    # a gap or a stray folder never makes a version number reused
    os.rename(e2.path, tmp_path / "reg" / "m" / "7")
    assert reg.register("m", _writer("m")).version == 8


def test_failed_write_registers_nothing_and_leaves_no_temp(tmp_path: Path) -> None:
    reg = Registry(tmp_path)

    def broken(folder: Path, version: int) -> None:
        (folder / "model.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        reg.register("m", broken)
    assert reg.list() == [] and list((tmp_path / "m").iterdir()) == []
    with pytest.raises(RegistryError, match=r"no model\.json was written"):
        reg.register("m", lambda folder, version: None)
    assert list((tmp_path / "m").iterdir()) == []


def test_lost_race_rebuilds_for_the_next_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    attempts: list[int] = []

    def write(folder: Path, version: int) -> None:
        attempts.append(version)
        if len(attempts) == 1:  # another process registers version 1 meanwhile
            Registry(tmp_path).register("m", _writer("m"))
        _writer("m")(folder, version)

    entry = reg.register("m", write)
    assert attempts == [1, 2] and entry.version == 2 and entry.meta["version"] == 2
    assert [e.meta["version"] for e in reg.list("m")] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    barrier = threading.Barrier(4)
    first = threading.local()

    def write(folder: Path, version: int) -> None:
        if not getattr(first, "done", False):  # all four start by claiming version 1
            first.done = True
            assert version == 1
            barrier.wait(timeout=10)
        time.sleep(0.02)
        _writer("race")(folder, version)

    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda _: reg.register("race", write).version, range(4)))
    assert sorted(versions) == [1, 2, 3, 4]
    assert [e.meta["version"] for e in reg.list("race")] == [1, 2, 3, 4]


def test_resolve_refs_and_errors(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.register("alpha", _writer("alpha"))
    reg.register("beta", _writer("beta"))
    assert reg.resolve("alpha").version == 3
    assert reg.resolve("alpha@2").ref == "alpha@2"
    with pytest.raises(NotFoundError) as exc:
        reg.resolve("gamma")
    assert "no model 'gamma'" in str(exc.value) and "alpha (1, 2, 3); beta (1)" in str(exc.value)
    with pytest.raises(NotFoundError, match=r"alpha@9 not found .*versions of alpha: 1, 2, 3"):
        reg.resolve("alpha@9")
    with pytest.raises(UsageError, match="invalid model reference 'Alpha@x'"):
        reg.resolve("Alpha@x")
    assert parse_ref("a-1@12") == ("a-1", 12)
    empty = Registry(tmp_path / "none")
    with pytest.raises(NotFoundError, match="nothing registered yet"):
        empty.resolve("alpha")
    assert empty.list() == []


def test_list_is_sorted_and_skips_temp_folders(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.register("b", _writer("b"))
    reg.register("a", _writer("a"))
    reg.register("a", _writer("a"))
    (tmp_path / "a" / ".tmp-crashed").mkdir()
    assert [e.ref for e in reg.list()] == ["a@1", "a@2", "b@1"]
    assert [e.ref for e in reg.list("a")] == ["a@1", "a@2"]


def test_unreadable_model_json_is_a_registry_error(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    entry = reg.register("m", _writer("m"))
    (entry.path / "model.json").write_text("{not json")
    with pytest.raises(RegistryError, match=r"unreadable .*model\.json"):
        reg.resolve("m")


def test_entry_loads_pipeline_and_holdout_as_raw_feature_frame(tmp_path: Path) -> None:
    entry = Registry(tmp_path).register("m", _writer("m"))
    assert entry.load_pipeline().predict([[0]]).tolist() == ["1"]
    X, y = entry.load_holdout()
    assert list(X.columns) == ["x", "c"]
    assert X["x"].dtype == np.float64 and X["c"].dtype == object
    assert X["c"].tolist() == ["a", ""]
    assert y is not None and y.tolist() == ["1", "2"]  # class labels come back as strings
    (entry.path / "pipeline.joblib").unlink()
    with pytest.raises(RegistryError, match=r"m@1: pipeline.joblib is missing"):
        entry.load_pipeline()


def test_summary_and_compare(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    a = reg.register("m", _writer("m"))
    b = reg.register("m", _writer(
        "m", model={"family": "knn", "params": {"n_neighbors": 5}, "cv_mean": 0.9,
                    "cv_std": 0.01, "scoring": "f1_macro"},
        metrics={"holdout": {"accuracy": 0.95, "f1_macro": 0.88}}))
    summary = summarize_entry(a)
    assert summary["ref"] == "m@1" and summary["holdout"] == {"accuracy": 0.9, "f1_macro": 0.88}
    cmp = compare_entries(a, b)
    assert cmp["a"] == "m@1" and cmp["b"] == "m@2"
    assert cmp["metrics"]["accuracy"]["delta"] == pytest.approx(0.05)
    assert cmp["metrics"]["f1_macro"]["same"] is True
    assert cmp["params"]["n_neighbors"] == {"a": 3, "b": 5, "same": False, "delta": 2}
    assert cmp["general"]["data_sha256"]["same"] is True
    assert cmp["differences"] == ["params.n_neighbors", "metrics.accuracy"]
    assert json.loads(json.dumps(cmp)) == cmp
