"""Training (host side): recipe -> data -> search -> holdout -> gates -> registry.

Public API::

    from edgeml.train import Registry, evaluate_model, load_recipe, train

Names are imported lazily (PEP 562): ``import edgeml.train`` alone loads no scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeml.train.evaluate import evaluate_model
    from edgeml.train.model_json import ModelJson, read_model_json
    from edgeml.train.recipe import Recipe, load_recipe
    from edgeml.train.registry import Entry, Registry
    from edgeml.train.workflow import TrainResult, train

# (``explore`` is not re-exported: it would shadow the submodule of the same name)
__all__ = ["Entry", "ModelJson", "Recipe", "Registry", "TrainResult", "evaluate_model",
           "load_recipe", "read_model_json", "train"]

_SOURCES = {
    "Entry": "edgeml.train.registry",
    "ModelJson": "edgeml.train.model_json",
    "Recipe": "edgeml.train.recipe",
    "Registry": "edgeml.train.registry",
    "TrainResult": "edgeml.train.workflow",
    "evaluate_model": "edgeml.train.evaluate",
    "load_recipe": "edgeml.train.recipe",
    "read_model_json": "edgeml.train.model_json",
    "train": "edgeml.train.workflow",
}


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
