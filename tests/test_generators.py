"""The shipped example data: generators are deterministic, files regenerate byte-identically,
and the planted signal (faults, ticket categories) is really there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from edgeml.train.generators import DEFAULTS, machine_health, support_tickets

DATA = Path(__file__).resolve().parent.parent / "models" / "data"


def test_generators_are_deterministic() -> None:
    pd.testing.assert_frame_equal(machine_health(300, seed=5), machine_health(300, seed=5))
    pd.testing.assert_frame_equal(support_tickets(100, seed=5), support_tickets(100, seed=5))
    assert not machine_health(300, seed=5).equals(machine_health(300, seed=6))
    assert not support_tickets(100, seed=5).equals(support_tickets(100, seed=6))


def test_shipped_files_regenerate_byte_identically(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeml.train.generators", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in DEFAULTS:
        fresh, shipped = (tmp_path / name).read_bytes(), (DATA / name).read_bytes()
        assert fresh == shipped, f"{name} differs from models/data/{name}: rerun the generator"
        assert len(shipped) < 1_000_000
        assert shipped.count(b"\n") - 1 <= 3000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(DEFAULTS)  # no temp files left


def test_every_data_file_is_documented() -> None:
    readme = (DATA / "README.md").read_text()
    for path in DATA.glob("*.csv"):
        assert f"`{path.name}`" in readme
        assert "License" in readme or "license" in readme


def test_machine_faults_move_the_sensors() -> None:
    frame = machine_health(3000, seed=1)
    assert set(frame["fault_type"]) == {"none", "bearing_wear", "overheating", "electrical"}
    assert 0.03 < frame["fault"].mean() < 0.12
    assert (frame["fault"] == (frame["fault_type"] != "none")).all()

    def ratio(fault: str, column: str) -> float:
        # faulty / normal medians within a machine type, averaged over types
        out = []
        for _, g in frame.groupby("machine_type"):
            bad, good = g[g["fault_type"] == fault][column], g[g["fault_type"] == "none"][column]
            if len(bad) >= 3:
                out.append(bad.median() / good.median())
        return float(np.mean(out))

    assert ratio("bearing_wear", "vibration_rms") > 2.0
    assert ratio("electrical", "current_a") > 1.4
    assert ratio("overheating", "temperature_c") > 1.25
    assert frame["temperature_c"].isna().any()  # sensor dropouts to impute


def test_faults_are_detectable_without_labels() -> None:
    from sklearn.ensemble import IsolationForest

    frame = machine_health(1500, seed=2)
    x = pd.get_dummies(frame[["machine_type"]]).astype(float)
    numeric = frame[["operating_hours", "rpm", "temperature_c", "vibration_rms", "current_a", "pressure_bar"]]
    numeric = (numeric - numeric.mean()) / numeric.std()
    x = pd.concat([numeric.fillna(0.0), x], axis=1)
    model = IsolationForest(n_estimators=100, random_state=0).fit(x)
    assert roc_auc_score(frame["fault"], -model.decision_function(x)) > 0.9


def test_ticket_text_needs_cleaning_and_predicts_the_category() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    frame = support_tickets(800, seed=3)
    assert set(frame["category"]) == {"hardware", "network", "billing", "software"}
    assert frame["category"].value_counts().min() > 150
    text = frame["text"]
    assert text.str.contains(r"\d").mean() > 0.3 and text.str.contains(r"[!?.:#-]").mean() > 0.5
    assert (text.str.upper() == text).any()  # some shouting
    pipe = make_pipeline(TfidfVectorizer(token_pattern=r"[A-Za-z]{2,}"), LogisticRegression(max_iter=1000))
    scores = cross_val_score(pipe, text, frame["category"], cv=3)
    assert scores.mean() > 0.9


@pytest.mark.parametrize("name", ["machine_health.csv", "support_tickets.csv", "penguins.csv"])
def test_shipped_files_load(name: str) -> None:
    from edgeml.train.data import load_dataset
    from edgeml.train.recipe import DataSpec

    targets = {"machine_health.csv": "fault_type", "support_tickets.csv": "category", "penguins.csv": "species"}
    ds = load_dataset(DataSpec(source=name, target=targets[name]), DATA, task="classification")
    assert ds.rows > 300 and ds.dropped_missing_target == 0
    if name == "support_tickets.csv":
        assert ds.kinds["text"] == "text" and ds.kinds["channel"] == "categorical"
