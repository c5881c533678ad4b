"""A tiny but complete bundle built by hand (onnx.helper), for verify and import tests.

The model is a two-class softmax over two numeric features (``temp``, ``load``) and one
categorical (``mode``, mapped by ai.onnx.ml LabelEncoder): inputs and outputs follow the bundle
contract, the self-test is computed with onnxruntime, and the archive is written with edgeml's
own deterministic writer, optionally signed. Host-side test helper (imports onnx and pandas).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

from edgeml.bundle.manifest import (
    MANIFEST,
    MODEL,
    SELFTEST,
    SIGNATURE,
    InputSpec,
    Manifest,
    OnnxInfo,
    OutputSpec,
    TargetInfo,
)
from edgeml.package.keys import sign_manifest
from edgeml.package.selftest import build_selftest, selftest_bytes
from edgeml.package.writer import file_hashes, write_bundle

CREATED_AT = "2026-11-28T17:00:00Z"
INPUTS = [
    InputSpec(name="temp", kind="numeric", dtype="float32", nullable=False, min=-10.0, max=40.0),
    InputSpec(name="load", kind="numeric", dtype="float32", nullable=False, min=0.0, max=1.0),
    InputSpec(name="mode", kind="categorical", dtype="string", nullable=False,
              categories=["eco", "turbo"]),
]
OUTPUTS = OutputSpec(label="label", probabilities="probabilities", classes=["ok", "hot"],
                     label_dtype="int64")


def model_bytes(opset: int = 17) -> bytes:
    """Softmax([temp, load, mode_code] @ W + b): label (int64 index) and probabilities."""
    w = numpy_helper.from_array(np.array([[-0.2, 0.2], [-1.0, 1.0], [-0.5, 0.5]], np.float32), "W")
    b = numpy_helper.from_array(np.array([3.0, -3.0], np.float32), "B")
    nodes = [
        helper.make_node("LabelEncoder", ["mode"], ["mode_code"], domain="ai.onnx.ml",
                         keys_strings=["eco", "turbo"], values_floats=[0.0, 1.0], default_float=0.5),
        helper.make_node("Concat", ["temp", "load", "mode_code"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("temp", TensorProto.FLOAT, [None, 1]),
         helper.make_tensor_value_info("load", TensorProto.FLOAT, [None, 1]),
         helper.make_tensor_value_info("mode", TensorProto.STRING, [None, 1])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("ai.onnx.ml", 2)],
                              ir_version=8, producer_name="tests.tiny_bundle")
    return bytes(model.SerializeToString())


def frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "temp": rng.uniform(-10, 40, n),
        "load": rng.uniform(0, 1, n),
        "mode": pd.Series(rng.choice(["eco", "turbo"], n), dtype=object),
    })


def members(model: bytes | None = None) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and every member of the tiny bundle (manifest.json included)."""
    model = model if model is not None else model_bytes()
    selftest = build_selftest(model, INPUTS, OUTPUTS, frame())
    files = {MODEL: model, SELFTEST: selftest_bytes(selftest)}
    manifest = Manifest(
        name="tiny", version=1, task="classification", created_at=CREATED_AT,
        edgeml_version="0.1.0",
        target=TargetInfo(name="x86_64", arch="x86_64"),
        onnx=OnnxInfo(opset=17, ir_version=8, min_onnxruntime="1.12"),
        inputs=list(INPUTS), outputs=OUTPUTS, files=file_hashes(files),
    )
    files[MANIFEST] = manifest.to_json()
    return manifest, files


def write(path: Path, files: dict[str, bytes], sign_key: Path | None = None) -> Path:
    """Write ``files`` as a bundle at ``path``, signing manifest.json with ``sign_key`` if given."""
    files = dict(files)
    if sign_key is not None:
        files[SIGNATURE] = sign_manifest(files[MANIFEST], sign_key) + b"\n"
    return write_bundle(path, files, CREATED_AT)


def make(out_dir: Path, sign_key: Path | None = None) -> Path:
    _manifest, files = members()
    return write(out_dir / "tiny-1-x86_64.edgeml", files, sign_key)


def read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}
