"""Shared fixtures: bundles and registry entries that many test files need.

The bundle factories stay importable as modules for the tests that build odd cases by hand:

- ``tiny_bundle``: a hand-made ONNX softmax (no scikit-learn), for verify and import tests;
- ``bundle_factory``: small scikit-learn pipelines converted with skl2onnx, any task;
- ``runtime_bundles``: a shipped recipe trained and packaged for x86_64 (cached per session);
- ``_mqtt_support.make_bundle``: the pump bundle of the MQTT tests.

The fixtures below wrap the common cases so that a test asks for what it needs by name; the
agent tests' ``base``, ``device``, ``watcher``, ``server`` and ``start_agent`` come from
``agent_fixtures`` (a module that defines its own fixture of one of these names keeps it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_fixtures import base, device, server, start_agent, watcher  # noqa: F401

MODEL_JSON_FEATURES = [
    {"name": "x", "kind": "numeric", "dtype": "float32", "nullable": True, "categories": None,
     "min": 0.0, "max": 1.0},
    {"name": "c", "kind": "categorical", "dtype": "string", "nullable": True,
     "categories": ["a", "b"], "min": None, "max": None},
]


def make_model_json(name: str = "m", version: int = 1, **over: Any) -> dict[str, Any]:
    """A small but valid ``model.json`` (classification, features ``x`` and ``c``);
    ``over`` replaces top-level fields."""
    meta: dict[str, Any] = {
        "schema_version": 1, "name": name, "version": version, "task": "classification",
        "created_at": "2026-11-28T17:00:00Z", "edgeml_version": "0.1.0",
        "recipe": {"name": name, "task": "classification"},
        "model": {"family": "knn", "params": {"n_neighbors": 3}, "cv_mean": 0.9, "cv_std": 0.01,
                  "scoring": "f1_macro", "converter": "skl2onnx"},
        "data": {"source": "data/x.csv", "sha256": "aa" * 32, "rows": 12, "rows_used": 10,
                 "dropped_missing_target": 2, "train_rows": 8, "holdout_rows": 2},
        "recipe_sha256": "r1",
        "metrics": {"primary": "f1_macro",
                    "holdout": {"accuracy": 0.9, "f1_macro": 0.88, "confusion_matrix": [[1]]}},
        "features": MODEL_JSON_FEATURES,
        "target": {"name": "label", "classes": ["1", "2"]},
        "files": {"pipeline": "pipeline.joblib", "holdout": "holdout.parquet",
                  "report": "report.html"},
    }
    meta.update(over)
    return copy.deepcopy(meta)


@pytest.fixture
def model_json() -> Callable[..., dict[str, Any]]:
    """``model_json(name, version, **over)``: see :func:`make_model_json`."""
    return make_model_json


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    """(private key, public key) made by ``edgeml keys generate``'s function."""
    from edgeml.package.keys import generate_keypair

    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def tiny_bundle_path(tmp_path: Path) -> Path:
    """The hand-made tiny bundle (``tests/tiny_bundle.py``), unsigned."""
    import tiny_bundle

    return tiny_bundle.make(tmp_path)


@pytest.fixture
def signed_tiny_bundle(tmp_path: Path, keypair: tuple[Path, Path]) -> tuple[Path, Path]:
    """(bundle, public key): the tiny bundle signed with :func:`keypair`'s private key."""
    import tiny_bundle

    return tiny_bundle.make(tmp_path / "signed", sign_key=keypair[0]), keypair[1]


@pytest.fixture(scope="session")
def penguins_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle, registry): ``models/penguins.yaml`` trained and packaged for x86_64, once."""
    from runtime_bundles import real_bundle

    return real_bundle(tmp_path_factory, "penguins")
