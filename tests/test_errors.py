"""Dependency errors are mapped once: onnxruntime's load errors, pydantic's validation errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import tiny_bundle

from edgeml.bundle import verify_bundle
from edgeml.bundle.manifest import MANIFEST, MODEL, Manifest
from edgeml.errors import BundleError, ProfileError, RecipeError
from edgeml.runtime import Predictor


def _broken_model_bundle(tmp_path: Path, good: Path) -> Path:
    """A bundle whose model.onnx is not ONNX, with checksums that match (so loading is reached)."""
    files = tiny_bundle.read_members(good)
    files[MODEL] = b"\x08\x07 this is not a protobuf model"
    manifest = Manifest.from_json(files[MANIFEST])
    hashes = {**manifest.files, MODEL: hashlib.sha256(files[MODEL]).hexdigest()}
    files[MANIFEST] = dataclasses.replace(manifest, files=hashes).to_json()
    return tiny_bundle.write(tmp_path / "broken-1-x86_64.edgeml", files)


def test_verify_and_predictor_report_an_unloadable_model_the_same_way(
    tmp_path: Path, tiny_bundle_path: Path
) -> None:
    import onnxruntime

    from edgeml.bundle.session import bundle_session

    path = _broken_model_bundle(tmp_path, tiny_bundle_path)
    with pytest.raises(BundleError) as mapped:
        bundle_session(tiny_bundle.read_members(path)[MODEL])
    prefix = f"{MODEL}: onnxruntime {onnxruntime.__version__} cannot load it: "
    assert str(mapped.value).startswith(prefix + "[ONNXRuntimeError]")
    assert "\n" not in str(mapped.value)
    with pytest.raises(BundleError) as from_verify:
        verify_bundle(path)
    with pytest.raises(BundleError) as from_predictor:
        Predictor(path)
    assert str(from_verify.value) == f"{path.name}: model check failed: {mapped.value}"
    assert str(from_predictor.value) == str(from_verify.value)


def test_recipe_and_profile_errors_name_file_and_field_the_same_way(tmp_path: Path) -> None:
    from edgeml.package.profiles import parse_profile
    from edgeml.train.recipe import parse_recipe

    with pytest.raises(RecipeError) as recipe:
        parse_recipe({"name": "x", "task": "classification", "data": {"source": "a.csv"},
                      "candidates": [{"family": "knn"}], "surprise": 1}, tmp_path / "x.yaml")
    assert str(recipe.value) == f"{tmp_path / 'x.yaml'}: surprise: unknown field"
    with pytest.raises(ProfileError) as profile:
        parse_profile(json.loads('{"name": "b", "surprise": 1}'), tmp_path / "b.yaml")
    assert str(profile.value).startswith(f"{tmp_path / 'b.yaml'}: ")
    assert profile.value.field is not None
