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
