"""Every shipped recipe x the main device profiles: trained, packaged with parity, verified, served."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeml.bundle.verify import verify_bundle
from edgeml.package.builder import package
from edgeml.runtime.predictor import Predictor
from edgeml.train.registry import Registry
from edgeml.train.workflow import train

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.stem for p in (ROOT / "models").glob("*.yaml"))
TARGETS = ("x86_64", "rpi4")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reg = tmp_path_factory.mktemp("registry")
    for name in RECIPES:
        train(ROOT / "models" / f"{name}.yaml", registry=reg)
    return reg


def test_every_recipe_is_shipped() -> None:
    assert {"iris", "penguins", "diabetes", "digits", "machine-health", "tickets",
            "machine-load"} <= set(RECIPES)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_packages_with_parity_and_verifies(
    registry: Path, tmp_path: Path, recipe: str, target: str
) -> None:
    result = package(recipe, target=target, registry=registry, out_dir=tmp_path)
    assert result.path.name == f"{recipe}-1-{target}.edgeml"
    assert result.parity["passed"] is True
    assert result.parity["rows"] > 0

    report = verify_bundle(result.path)
    assert report.ok, report.failed
    assert report.status("selftest") == "ok"

    # The device-side Predictor reproduces scikit-learn on holdout rows (raw features in).
    entry = Registry(registry).resolve(recipe)
    X, _ = entry.load_holdout()
    X = X.head(20)
    pipeline = entry.load_pipeline()
    rows = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in X.to_dict(orient="records")
    ]
    derived = entry.record.derived_inputs()
    if derived:  # a device sends the raw timestamp, not the features derived from it
        import pandas as pd

        raw = pd.read_parquet(entry.file("holdout"), columns=[d.source for d in derived]).head(20)
        for row, (_, values) in zip(rows, raw.iterrows(), strict=True):
            for d in derived:
                for name in d.names:
                    del row[name]
                row[d.source] = values[d.source]
    pred = Predictor(result.path).predict(rows).to_dict()
    expected = pipeline.predict(X)
    task = entry.meta["task"]
    if task == "classification":
        assert [p["label"] for p in pred["predictions"]] == [str(v) for v in expected]
    elif task == "regression":
        got = [p["prediction"] for p in pred["predictions"]]
        assert got == pytest.approx(list(expected), rel=1e-4, abs=1e-3)
    else:
        labels = ["anomaly" if v == -1 else "normal" for v in expected]
        assert [p["label"] for p in pred["predictions"]] == labels
