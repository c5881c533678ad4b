"""The training column of the catalog: what a recipe may name, checked against
:mod:`edgeml.catalog` (the one table of families and steps that training *and* conversion
read), so a pipeline built from a valid recipe converts.

:func:`validate_candidates` runs when the recipe is loaded (``edgeml.train.recipe``): an
unknown family, an unknown parameter, an invalid value, a fixed parameter, or a value the
converter cannot convert (a :class:`~edgeml.catalog.ParamRule`) is a RecipeError naming the
file and the field, e.g. ``candidates[0].params.loss: 'hinge' cannot be converted to ONNX by
skl2onnx for SGDClassifier: ...; use 'log_loss' or 'modified_huber'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeml.catalog import (
    CATALOG,
    EDGEML,
    FAMILIES,
    ONNXMLTOOLS,
    SKL2ONNX,
    STEPS,
    Family,
    Step,
)
from edgeml.errors import RecipeError, UnsupportedStepError

__all__ = [
    "EDGEML",
    "FAMILIES",
    "ONNXMLTOOLS",
    "SKL2ONNX",
    "STEPS",
    "Family",
    "Step",
    "converter_library",
    "get_family",
    "supported_classes",
    "supported_families",
    "validate_candidates",
]


def supported_families(task: str | None = None) -> list[str]:
    """Names of the families usable here (installed), optionally only those for ``task``."""
    return CATALOG.supported(task)


def get_family(
    name: str, task: str, *, path: Path | str = "<recipe>", where: str = "family"
) -> Family:
    """The family ``name`` for ``task``; a RecipeError listing the supported ones otherwise."""
    fam = FAMILIES.get(name)
    supported = ", ".join(supported_families(task))
    if fam is None:
        raise RecipeError(path, f"unknown family {name!r}; supported for {task}: {supported}", where)
    if not fam.available:
        raise RecipeError(
            path,
            f"family {name!r} needs the {fam.requires!r} package (pip install {fam.requires} "
            f"onnxmltools); supported for {task}: {supported}",
            where,
        )
    if task not in fam.estimators:
        raise RecipeError(
            path,
            f"family {name!r} does not support task {task} (only {', '.join(fam.tasks)}); "
            f"supported for {task}: {supported}",
            where,
        )
    return fam


def _check_value(cls: type, base: Mapping[str, Any], param: str, value: Any) -> str | None:
    """Let scikit-learn's own parameter validation judge one value; the message or None."""
    try:
        est = cls(**{**base, param: value})
        validate = getattr(est, "_validate_params", None)
        if validate is not None:
            validate()
    except (TypeError, ValueError) as exc:
        return str(exc).splitlines()[0]
    return None


def validate_candidates(recipe: Any) -> None:
    """Check every candidate's family and params for ``recipe.task``; RecipeError otherwise."""
    path = recipe.path or "<recipe>"
    task = recipe.task
    for i, cand in enumerate(recipe.candidates):
        fam = get_family(cand.family, task, path=path, where=f"candidates[{i}].family")
        cls = fam.estimator_class(task)
        base = dict(fam.defaults.get(task, {}))
        known = sorted(cls().get_params())
        rules = fam.rules_for(task)
        for param, values in cand.params.items():
            where = f"candidates[{i}].params.{param}"
            if param not in known:
                raise RecipeError(
                    path,
                    f"unknown parameter for {cand.family} ({cls.__name__}); valid: {', '.join(known)}",
                    where,
                )
            if param in fam.fixed:
                raise RecipeError(path, f"{cand.family} fixes {param}: {fam.fixed[param]}; "
                                        f"remove it", where)
            if not values:
                raise RecipeError(path, "needs at least one value", where)
            for value in values:
                problem = _check_value(cls, base, param, value)
                if problem:
                    raise RecipeError(path, f"invalid value {value!r}: {problem}", where)
                rule = rules.get(param)
                refused = rule.problem(value, cls.__name__, fam.converter) if rule else None
                if refused:
                    raise RecipeError(path, refused, where)


def supported_classes() -> dict[type, str]:
    """``{class: converter library}`` for every step and every available family estimator."""
    return {c.cls: c.library for c in CATALOG.convertible()}


def converter_library(obj: object) -> str:
    """The ONNX converter library for a pipeline step or estimator (instance or class).

    Exact classes only (a subclass may change behaviour the converter relies on).
    Raises UnsupportedStepError listing the supported classes.
    """
    cls = obj if isinstance(obj, type) else type(obj)
    table = supported_classes()
    lib = table.get(cls)
    if lib is None:
        names = ", ".join(sorted(c.__name__ for c in table))
        raise UnsupportedStepError(f"no ONNX converter for {cls.__name__}; supported: {names}")
    return lib

