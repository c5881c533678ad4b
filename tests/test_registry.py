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
from conftest import make_model_json
from sklearn.dummy import DummyClassifier

from edgeml.errors import NotFoundError, RegistryError, UsageError
from edgeml.train.model_json import dump_model_json, parse_model_json, primary_metric
from edgeml.train.registry import Registry, compare_entries, parse_ref, summarize_entry


def _meta(name: str, version: int, **over: Any) -> dict[str, Any]:
    return make_model_json(name, version, **over)


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
        metrics={"primary": "f1_macro", "holdout": {"accuracy": 0.95, "f1_macro": 0.88}}))
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


# -- model.json schema: validated when written and whenever read -----------------------------


def _register_raw(tmp_path: Path, meta: dict[str, Any]) -> Path:
    """A valid entry whose model.json is then replaced by ``meta`` (as a user or bug would)."""
    entry = Registry(tmp_path).register("m", _writer("m"))
    (entry.path / "model.json").write_text(json.dumps(meta))
    return entry.path / "model.json"


def test_unknown_major_schema_version_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    path = _register_raw(tmp_path, _meta("m", 1, schema_version=2))
    with pytest.raises(RegistryError) as exc:
        Registry(tmp_path).resolve("m")
    assert str(exc.value).startswith(f"{path}: schema_version: version 2 is not supported")
    assert "reads model.json schema version 1" in str(exc.value)


def test_a_wrong_field_names_file_and_field(tmp_path: Path) -> None:
    bad = _meta("m", 1)
    bad["data"] = {**bad["data"], "holdout_rows": "many"}
    path = _register_raw(tmp_path, bad)
    with pytest.raises(RegistryError, match=rf"^{path}: data\.holdout_rows: "):
        Registry(tmp_path).list()
    bad = _meta("m", 1)
    bad["features"][1] = {**bad["features"][1], "kind": "image"}
    _register_raw(tmp_path / "2", bad)
    with pytest.raises(RegistryError, match=r"model\.json: features\[1\]\.kind: Input should be"):
        Registry(tmp_path / "2").resolve("m@1")
    _register_raw(tmp_path / "3", {k: v for k, v in _meta("m", 1).items() if k != "schema_version"})
    with pytest.raises(RegistryError, match=r"model\.json: schema_version: missing"):
        Registry(tmp_path / "3").resolve("m")


def test_holdout_metrics_must_be_numbers(tmp_path: Path) -> None:
    path = _register_raw(tmp_path, _meta("m", 1, metrics={"holdout": {"accuracy": "high"}}))
    with pytest.raises(RegistryError, match=rf"^{path}: metrics\.holdout: .*accuracy: expected a number"):
        Registry(tmp_path).resolve("m")


def test_entry_must_match_its_folder(tmp_path: Path) -> None:
    _register_raw(tmp_path, _meta("m", 3))
    with pytest.raises(RegistryError, match=r"name/version: says m@3, but the folder is m@1"):
        Registry(tmp_path).resolve("m")


def test_register_refuses_an_invalid_model_json_and_registers_nothing(tmp_path: Path) -> None:
    def write(folder: Path, version: int) -> None:
        _writer("m", task="clustering")(folder, version)

    with pytest.raises(RegistryError, match=r"model\.json: task: Input should be"):
        Registry(tmp_path).register("m", write)
    assert list((tmp_path / "m").iterdir()) == []


def test_older_entries_get_their_primary_metric_and_unknown_fields_are_ignored(tmp_path: Path) -> None:
    legacy = _meta("m", 1, metrics={"holdout": {"accuracy": 0.9, "f1_macro": 0.88}},
                   added_in_a_later_minor={"x": 1})
    _register_raw(tmp_path, legacy)
    entry = Registry(tmp_path).resolve("m")
    assert entry.record.metrics.primary == "f1_macro"  # the recipe's scoring
    assert "added_in_a_later_minor" not in entry.meta
    assert summarize_entry(entry)["primary"] == "f1_macro"


def test_primary_metric_rule() -> None:
    hold = {"accuracy": 0.9, "f1_macro": 0.8, "confusion_matrix": [[1]]}
    assert primary_metric("classification", hold, "f1_macro", ["accuracy"]) == "f1_macro"
    assert primary_metric("classification", hold, "neg_log_loss", ["accuracy"]) == "accuracy"
    assert primary_metric("classification", hold, None, []) == "f1_macro"
    assert primary_metric("anomaly", {"anomaly_rate": 0.1, "f1": None}, None, []) == "anomaly_rate"
    assert primary_metric("regression", {}, "r2", []) is None


def test_trainer_output_is_checked_strictly() -> None:
    meta = _meta("m", 1)
    blob = dump_model_json(meta)
    assert json.loads(blob) == parse_model_json(meta).to_dict()
    with pytest.raises(RegistryError, match=r"model\.json: modle: not a field of model\.json schema 1"):
        dump_model_json({**meta, "modle": {}})
    with pytest.raises(RegistryError, match=r"model\.json: model\.cv_meen: not a field"):
        dump_model_json({**meta, "model": {**meta["model"], "cv_meen": 0.5}})
    with pytest.raises(RegistryError, match=r"metrics\.primary: 'r2' is not a holdout metric"):
        dump_model_json({**meta, "metrics": {**meta["metrics"], "primary": "r2"}})


def test_bundle_metrics_have_one_shape() -> None:
    record = parse_model_json(_meta("m", 1, metrics={
        "primary": "f1_macro",
        "holdout": {"accuracy": 0.9, "f1_macro": 0.88, "roc_auc_ovr": None,
                    "confusion_matrix": [[1, 0], [1, 2]],
                    "per_class": {"1": {"precision": 0.5, "recall": 1.0, "f1": 0.67, "support": 1},
                                  "2": {"precision": 1.0, "recall": 0.67, "f1": 0.8, "support": 3}}},
    }))
    m = record.bundle_metrics()
    assert m.primary == "f1_macro" and m.primary_value == 0.88
    assert m.holdout == {"accuracy": 0.9, "f1_macro": 0.88}  # null (undefined) metrics left out
    assert m.holdout_rows == 2 and m.confusion_matrix == [[1, 0], [1, 2]]
    assert m.per_class is not None and m.per_class["2"]["support"] == 3


def test_cli_readers_report_a_bad_model_json_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgeml.cli import main

    path = _register_raw(tmp_path, _meta("m", 1, schema_version=9))
    for args in (["models", "list"], ["models", "show", "m"], ["models", "compare", "m", "m@1"]):
        with pytest.raises(SystemExit) as exc:
            main([*args, "--registry", str(tmp_path)])
        err = capsys.readouterr().err
        assert exc.value.code == 1
        assert err == (f"error: {path}: schema_version: version 9 is not supported: this edgeml "
                       "reads model.json schema version 1 (re-train the model, or use the edgeml "
                       "that wrote it)\n")
