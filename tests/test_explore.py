"""``edgeml explore``: terminal profile, JSON, and a self-contained HTML report with hints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeml.cli import main
from edgeml.train.explore import explore


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@pytest.fixture
def leaky_csv(tmp_path: Path) -> Path:
    """A classification dataset with a planted leaky column, an id, a constant and noise."""
    rng = np.random.default_rng(3)
    n = 300
    y = rng.choice(["ok", "worn", "broken"], n, p=[0.6, 0.3, 0.1])
    signal = rng.normal(size=n) + (y == "worn") * 1.0 + (y == "broken") * 2.0
    frame = pd.DataFrame({
        "row_id": np.arange(1, n + 1),
        "temperature": signal * 3 + 50,
        "noise": rng.normal(size=n),
        "site": rng.choice(["a", "b", "c"], n),
        "plant": "p1",
        "repair_code": np.select([y == "ok", y == "worn"], ["R0", "R1"], "R2"),  # known only afterwards
        "state": y,
    })
    frame.loc[::10, "temperature"] = np.nan
    path = tmp_path / "machines.csv"
    frame.to_csv(path, index=False)
    return path


def test_terminal_profile_and_hints(leaky_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["explore", str(leaky_csv), "--target", "state"], capsys)
    assert code == 0, err
    text = " ".join(out.split())
    assert "300 rows, 6 features, target state (classification)" in text
    for column in ("temperature", "noise", "site", "repair_code"):
        assert column in out
    assert re.search(r"temperature\s+10\.0", out), "missing % of temperature"
    assert "Class balance of 'state'" in text
    assert "leakage: 'repair_code' alone predicts 'state'" in text
    assert "id_like: 'row_id' looks like an identifier" in text
    assert "constant: 'plant' holds a single value" in text
    assert "'noise' alone" not in text and "'temperature' alone" not in text


def test_json_output(leaky_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["explore", str(leaky_csv), "--target", "state", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["kinds"] == {"row_id": "numeric", "temperature": "numeric", "noise": "numeric",
                             "site": "categorical", "plant": "categorical", "repair_code": "categorical"}
    temp = data["columns"]["temperature"]
    assert temp["missing"] == 30 and temp["min"] <= temp["q25"] <= temp["median"] <= temp["q75"] <= temp["max"]
    assert sum(temp["histogram"]["counts"]) == 270
    assert sum(data["class_balance"].values()) == 300
    assert data["association"]["repair_code"] == {"measure": "cramers_v", "value": pytest.approx(1.0)}
    assert data["association"]["temperature"]["measure"] == "eta"
    assert data["association"]["temperature"]["value"] > data["association"]["noise"]["value"]
    assert {(h["kind"], h["column"]) for h in data["hints"]} == {
        ("leakage", "repair_code"), ("id_like", "row_id"), ("constant", "plant")}
    assert data["correlations"]["noise"]["noise"] == pytest.approx(1.0)


def test_html_report_is_self_contained(leaky_csv: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "out" / "profile.html"
    code, out, _ = run_main(["explore", str(leaky_csv), "--target", "state", "--report", str(report)], capsys)
    assert code == 0
    assert "report:" in out
    html = report.read_text()
    for title in ("Hints", "Columns", "Distributions", "Target: state (classification)",
                  "Association with the target", "Correlations"):
        assert f"<h2>{title}</h2>" in html
    assert "repair_code" in html and "possible target leakage" in html
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) >= 4
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html
    assert [p.name for p in report.parent.iterdir()] == ["profile.html"]  # no temp files left


def test_sklearn_dataset_defaults_to_its_target() -> None:
    result = explore("sklearn:iris")
    assert result.target == "target" and result.task == "classification"
    assert result.class_balance == {"setosa": 50, "versicolor": 50, "virginica": 50}
    assert not [h for h in result.hints if h.kind == "leakage"]  # petal width is good, not perfect


def test_regression_target_and_text_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 120
    x = rng.normal(size=n)
    words = np.array(["pump", "noisy", "leaking", "fine", "checked", "replaced", "seal", "today"])
    notes = [" ".join(rng.choice(words, 6)) for _ in range(n)]
    frame = pd.DataFrame({"x": x, "note": notes, "y": 2 * x + rng.normal(scale=0.5, size=n)})
    frame.to_parquet(tmp_path / "d.parquet")
    result = explore(tmp_path / "d.parquet", target="y")
    assert result.task == "regression"
    assert result.kinds == {"x": "numeric", "note": "text"}
    assert result.association["x"]["measure"] == "pearson_r"
    assert result.association["x"]["value"] > 0.9
    assert result.association["note"]["value"] is None
    assert result.target_stats is not None and result.class_balance is None
    assert "mean_length" in result.columns["note"]


def test_explore_errors_exit_2(tmp_path: Path, leaky_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["explore", str(tmp_path / "nope.csv")], capsys)
    assert code == 2 and "error: data file not found" in err
    code, _, err = run_main(["explore", str(leaky_csv), "--target", "colour"], capsys)
    assert code == 2 and "target column 'colour' not found" in err and "repair_code" in err


def test_sqlite_file_with_one_table_or_named_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    con = sqlite3.connect(tmp_path / "plant.db")
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "x"]}).to_sql("readings", con, index=False)
    con.close()
    assert explore(tmp_path / "plant.db").kinds == {"a": "numeric", "b": "categorical"}
    con = sqlite3.connect(tmp_path / "plant.db")
    pd.DataFrame({"c": [1]}).to_sql("other", con, index=False)
    con.close()
    code, _, err = run_main(["explore", str(tmp_path / "plant.db")], capsys)
    assert code == 2 and "needs data.table or data.query; tables: other, readings" in err
    code, out, _ = run_main(["explore", f"sqlite:{tmp_path / 'plant.db'}", "--table", "other", "--json"], capsys)
    assert code == 0 and json.loads(out)["kinds"] == {"c": "numeric"}
