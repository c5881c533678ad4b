"""Every shipped recipe (models/*.yaml) is valid and trains end to end, meeting its own gates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeml.train.recipe import load_recipe
from edgeml.train.registry import Registry
from edgeml.train.workflow import check_recipe, train

MODELS = Path(__file__).resolve().parent.parent / "models"
RECIPES = sorted(MODELS.glob("*.yaml"))
# Recipes whose end-to-end test takes > ~20 s on 2 quiet cores (none today: digits ~10 s,
# penguins ~9 s, most of it the report's permutation importance and learning curve).
SLOW: set[str] = set()
# What the README promises, beyond each recipe's own gates.
PROMISES = {
    "penguins": ("f1_macro", 0.95),
    "digits": ("accuracy", 0.95),
    "diabetes": ("r2", 0.40),
    "iris": ("accuracy", 0.90),
}


def _params() -> list[object]:
    return [
        pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in SLOW else [])
        for p in RECIPES
    ]


def test_the_promised_recipes_ship() -> None:
    assert {"iris", "penguins", "diabetes", "digits"} <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_is_valid_and_states_its_expectations(path: Path) -> None:
    recipe = load_recipe(path)
    check_recipe(recipe)
    assert recipe.name == path.stem
    assert recipe.gates, f"{path.name} has no gates: put its expectations there so CI proves them"
    if path.stem in PROMISES:  # the quick default recipes
        for cand in recipe.candidates:
            assert all(v <= 100 for v in cand.params.get("n_estimators", [])), "keep it quick"


@pytest.mark.parametrize("path", _params())
def test_recipe_trains_and_meets_its_gates(path: Path, tmp_path: Path) -> None:
    result = train(path, registry=tmp_path)  # a failed gate raises GateError
    meta = json.loads((result.entry.path / "model.json").read_text())
    assert result.ref == f"{path.stem}@1"
    assert meta["gates"] and all(g["passed"] for g in meta["gates"])
    if path.stem in PROMISES:
        metric, floor = PROMISES[path.stem]
        assert meta["metrics"]["holdout"][metric] >= floor
    assert Registry(tmp_path).resolve(path.stem).meta == meta


SGD_RECIPE = """\
name: iris-sgd
task: classification
data: {source: sklearn:iris, target: target}
split: {holdout: 0.3, stratify: true, cv: 3, seed: 42}
candidates:
  - family: sgd
    params: {loss: [modified_huber], alpha: [0.01]}
gates: {accuracy: ">= 0.6"}
"""


def test_sgd_modified_huber_recipe_trains_packages_and_predicts_like_sklearn(tmp_path: Path) -> None:
    from edgeml.package.builder import package
    from edgeml.runtime.predictor import Predictor

    path = tmp_path / "iris-sgd.yaml"
    path.write_text(SGD_RECIPE)
    result = train(path, registry=tmp_path / "reg")
    bundle = package("iris-sgd", target="x86_64", registry=tmp_path / "reg", out_dir=tmp_path)
    assert bundle.parity["passed"] is True and bundle.parity["tied_rows"] == 0
    entry = Registry(tmp_path / "reg").resolve("iris-sgd")
    X, _ = entry.load_holdout()
    pipeline = entry.load_pipeline()
    assert pipeline[-1].loss == "modified_huber" and result.ref == "iris-sgd@1"
    pred = Predictor(bundle.path).predict(X.to_dict(orient="records")).to_dict()
    assert [p["label"] for p in pred["predictions"]] == [str(v) for v in pipeline.predict(X)]


def test_unconvertible_recipe_is_refused_by_edgeml_train_before_any_work(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "iris-sgd.yaml"
    path.write_text(SGD_RECIPE.replace("modified_huber", "hinge"))
    proc = subprocess.run([sys.executable, "-m", "edgeml", "train", str(path), "--registry",
                           str(tmp_path / "reg")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {path}: candidates[0].params.loss: 'hinge' cannot be converted to ONNX by "
        "skl2onnx for SGDClassifier: only these losses have predict_proba, which the bundle's "
        "probabilities output needs; use 'log_loss' or 'modified_huber'")
    assert not (tmp_path / "reg").exists()
