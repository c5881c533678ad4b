"""`edgeml train` and `edgeml models list|show|compare`: what a user sees, and what gets registered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from edgeml.cli import cli, main
from edgeml.train.registry import Registry
from edgeml.train.workflow import train

MODEL_JSON_KEYS = {
    "schema_version", "name", "version", "created_at", "edgeml_version", "task", "recipe",
    "recipe_sha256", "data", "libraries", "model", "leaderboard", "metrics", "gates",
    "features", "target", "reference_profile", "files",
}


def _csv(path: Path, n: int = 160, seed: int = 0, time_col: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", ""], n)
    noise = rng.normal(scale=0.7, size=n)
    label = np.where(x1 + 0.5 * x2 + (colour == "red") + noise > 0.3, "yes", "no")
    frame = pd.DataFrame({"x1": x1, "x2": x2, "colour": colour, "label": label})
    frame.loc[::11, "x2"] = np.nan
    if time_col:
        frame["ts"] = rng.permutation(n)
    frame.to_csv(path, index=False)
    return path


def _recipe(tmp_path: Path, name: str = "tiny", **over: Any) -> Path:
    _csv(tmp_path / "tiny.csv")
    raw: dict[str, Any] = {
        "name": name,
        "task": "classification",
        "data": {"source": "tiny.csv", "target": "label", "columns": {"colour": "categorical"}},
        "split": {"holdout": 0.25, "cv": 3, "seed": 1},
        "candidates": [
            {"family": "logistic_regression", "params": {"C": [0.1, 1.0]}},
            {"family": "decision_tree", "params": {"max_depth": [2, 4]}},
        ],
        "gates": {"accuracy": ">= 0.6"},
    }
    raw.update(over)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_train_prints_leaderboard_metrics_gates_and_registers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "reg"
    code, out, err = _run(capsys, "train", str(_recipe(tmp_path)), "--registry", str(reg))
    assert code == 0, err
    for text in ("Leaderboard (f1_macro", "CV score ± spread", "fit time", "logistic_regression",
                 "decision_tree", "Holdout metrics (40 rows)", "f1_macro", "accuracy >= 0.6",
                 "PASS", "registered: tiny@1", f"report: {reg / 'tiny' / '1' / 'report.html'}"):
        assert text in out, text
    assert "[1/2] logistic_regression: f1_macro" in err and "[2/2] decision_tree" in err

    entry = Registry(reg).resolve("tiny")
    meta = json.loads((entry.path / "model.json").read_text())
    assert set(meta) == MODEL_JSON_KEYS
    assert meta["version"] == 1 and meta["schema_version"] == 1
    assert meta["data"]["train_rows"] == 120 and meta["data"]["holdout_rows"] == 40
    assert meta["target"] == {"name": "label", "classes": ["no", "yes"]}
    assert [f["name"] for f in meta["features"]] == ["x1", "x2", "colour"]
    assert meta["model"]["family"] in ("logistic_regression", "decision_tree")
    assert meta["leaderboard"][0]["family"] == meta["model"]["family"]
    assert meta["gates"][0]["passed"] is True
    for name in ("pipeline.joblib", "holdout.parquet", "report.html"):
        assert (entry.path / name).is_file()
    X, y = entry.load_holdout()
    pipe = entry.load_pipeline()
    assert list(X.columns) == ["x1", "x2", "colour"] and len(X) == 40
    accuracy = float((pipe.predict(X) == y.to_numpy()).mean())
    assert accuracy == pytest.approx(meta["metrics"]["holdout"]["accuracy"])


def test_unmet_gate_exits_1_and_registers_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "reg"
    recipe = _recipe(tmp_path, gates={"accuracy": ">= 0.6", "f1_macro": ">= 0.999"})
    code, _, err = _run(capsys, "train", str(recipe), "--registry", str(reg))
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(
        "error: tiny: quality gate(s) not met, nothing registered: f1_macro = 0.")
    assert "(required >= 0.999)" in err and "accuracy =" not in err.splitlines()[-1]
    assert Registry(reg).list() == []
    assert not (reg / "tiny").exists() or not any((reg / "tiny").iterdir())


def test_recipe_errors_exit_2_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(tmp_path, candidates=[{"family": "knn"}, {"family": "gradient_magic"}])
    (tmp_path / "tiny.csv").unlink()
    code, _, err = _run(capsys, "train", str(recipe), "--registry", str(tmp_path / "r"))
    assert code == 2
    assert err.startswith(f"error: {recipe}: candidates[1].family: unknown family 'gradient_magic'")
    assert "logistic_regression" in err and "random_forest" in err
    recipe = _recipe(tmp_path, candidates=[{"family": "knn", "params": {"neighbours": [3]}}])
    code, _, err = _run(capsys, "train", str(recipe), "--registry", str(tmp_path / "r"))
    assert code == 2 and "candidates[0].params.neighbours: unknown parameter for knn" in err
    recipe = _recipe(tmp_path, gates={"auc": ">= 0.5"})
    code, _, err = _run(capsys, "train", str(recipe), "--registry", str(tmp_path / "r"))
    assert code == 2 and "gates.auc: unknown metric 'auc' for classification" in err
    code, _, err = _run(capsys, "train", str(tmp_path / "nope.yaml"))
    assert code == 2 and "recipe not found" in err


def test_same_seed_gives_identical_metrics_and_two_versions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "reg"
    recipe = _recipe(tmp_path)
    first = train(recipe, registry=reg)
    second = train(recipe, registry=reg)
    assert (first.ref, second.ref) == ("tiny@1", "tiny@2")
    assert first.metrics == second.metrics and first.leaderboard[0]["cv_mean"] == \
        second.leaderboard[0]["cv_mean"]
    a, b = (json.loads((e.path / "model.json").read_text()) for e in (first.entry, second.entry))
    assert a["reference_profile"] == b["reference_profile"] and a["model"] == b["model"]

    code, out, _ = _run(capsys, "models", "compare", "tiny@1", "tiny@2", "--registry", str(reg),
                        "--json")
    cmp = json.loads(out)
    assert code == 0 and cmp["a"] == "tiny@1" and cmp["b"] == "tiny@2"
    assert cmp["differences"] == []
    assert cmp["metrics"]["accuracy"]["delta"] == 0
    code, out, _ = _run(capsys, "models", "compare", "tiny@1", "tiny", "--registry", str(reg))
    assert code == 0 and "differences: none" in out and "data_sha256" in out

    code, out, _ = _run(capsys, "models", "list", "--registry", str(reg), "--json")
    rows = json.loads(out)
    assert [r["ref"] for r in rows] == ["tiny@1", "tiny@2"]
    assert set(rows[0]) == {"ref", "name", "version", "task", "created_at", "family", "scoring",
                            "cv_mean", "primary", "holdout", "data_sha256", "path"}
    assert rows[0]["primary"] == "f1_macro"
    assert rows[0]["holdout"]["accuracy"] == first.metrics["accuracy"]
    code, out, _ = _run(capsys, "models", "list", "--registry", str(reg))
    assert code == 0 and "tiny@2" in out and "f1_macro" in out

    code, out, _ = _run(capsys, "models", "show", "tiny", "--registry", str(reg), "--json")
    shown = json.loads(out)
    assert shown == b and shown["version"] == 2
    code, out, _ = _run(capsys, "models", "show", "tiny@1", "--registry", str(reg))
    assert code == 0 and "tiny@1" in out and "Holdout metrics" in out and "colour" in out


def test_models_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "models", "show", "ghost", "--registry", str(tmp_path))
    assert code == 2 and "error: no model 'ghost'" in err and "nothing registered yet" in err
    code, out, _ = _run(capsys, "models", "list", "--registry", str(tmp_path), "--json")
    assert code == 0 and json.loads(out) == []


def test_data_override_and_time_column(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, split={"holdout": 0.25, "cv": 3, "seed": 1, "time_column": "ts"},
                     data={"source": "tiny.csv", "target": "label", "drop": ["ts"],
                           "columns": {"colour": "categorical"}})
    other = _csv(tmp_path / "other.csv", n=120, seed=5, time_col=True)
    result = train(recipe, data=other, registry=tmp_path / "reg")
    meta = result.entry.meta
    assert meta["data"]["source"].endswith("other.csv") and meta["data"]["rows"] == 120
    assert [f["name"] for f in meta["features"]] == ["x1", "x2", "colour"]  # ts only orders
    X, _ = result.entry.load_holdout()
    ts_by_x1 = pd.read_csv(other).set_index("x1")["ts"]
    assert len(X) == 30
    assert sorted(ts_by_x1[X["x1"]]) == list(range(90, 120))  # the latest quarter is the holdout


def test_anomaly_and_regression_train(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 200
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "fault": 0})
    frame.loc[:14, "a"] += 6
    frame.loc[:14, "fault"] = 1
    frame["y"] = 3 * frame["b"] + rng.normal(scale=0.3, size=n)
    frame.to_csv(tmp_path / "m.csv", index=False)
    anomaly = tmp_path / "anom.yaml"
    anomaly.write_text(yaml.safe_dump({
        "name": "anom", "task": "anomaly",
        "data": {"source": "m.csv", "target": "fault", "drop": ["y"]},
        "split": {"cv": 3},
        "candidates": [{"family": "isolation_forest",
                        "params": {"n_estimators": [30], "contamination": [0.05, 0.1]}}],
        "gates": {"recall": ">= 0.5"},
    }))
    res = train(anomaly, registry=tmp_path / "reg")
    assert res.entry.meta["model"]["scoring"] == "f1"
    assert res.entry.meta["target"] == {"name": "fault", "classes": None}
    assert res.entry.meta["reference_profile"]["prediction"]["kind"] == "anomaly"
    assert 0 < res.metrics["anomaly_rate"] < 0.3

    regression = tmp_path / "reg.yaml"
    regression.write_text(yaml.safe_dump({
        "name": "reg", "task": "regression",
        "data": {"source": "m.csv", "target": "y", "drop": ["fault"]},
        "split": {"cv": 3},
        "candidates": [{"family": "ridge", "params": {"alpha": [1.0]}}],
        "gates": {"r2": ">= 0.9"},
    }))
    res = train(regression, registry=tmp_path / "reg")
    assert res.metrics["r2"] > 0.9 and res.entry.meta["model"]["scoring"] == "r2"


def test_cli_parsing_and_help() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--help"])
    assert result.exit_code == 0 and "--data" in result.output and "--registry" in result.output
    result = runner.invoke(cli, ["models", "--help"])
    assert all(cmd in result.output for cmd in ("list", "show", "compare"))
    result = runner.invoke(cli, ["models", "compare", "a"])
    assert result.exit_code == 2 and "Missing argument" in result.output


def test_train_as_subprocess_exit_code(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, gates={"accuracy": ">= 0.999"})
    proc = subprocess.run([sys.executable, "-m", "edgeml", "train", str(recipe), "--registry",
                           str(tmp_path / "reg")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "nothing registered" in proc.stderr and "Traceback" not in proc.stderr
