"""Build small but real edgeml bundles by hand, for runtime tests and odd cases.

Each bundle holds a scikit-learn pipeline converted with skl2onnx following the
bundle contract (one ONNX input per raw feature, shape [None, 1]; float32 for
numeric and string for categorical; classifiers output ``label`` and
``probabilities`` without ZipMap, regressors ``variable``, anomaly detectors
``label`` and ``scores``), a manifest built from the dataclasses, a reference
profile computed from the training data, and a self-test. The archive is written
deterministically. Host-side test helper: imports scikit-learn and skl2onnx.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import IsolationForest, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from edgeml.bundle.manifest import (
    MANIFEST,
    MODEL,
    SELFTEST,
    InputSpec,
    Manifest,
    OnnxInfo,
    OutputSpec,
    TargetInfo,
)

NUMERIC = ["temp", "pressure"]
CATEGORICAL = ["color"]
COLORS = ["blue", "green", "red"]
CLASSES = ["cold", "mild", "hot"]
OPSET = 17
ZIP_DATE = (2026, 11, 28, 17, 0, 0)
ARCHES = {"rpi4": "aarch64", "rpi5": "aarch64", "rpi-zero2": "aarch64", "rpi-armv7": "armv7l"}


@dataclass(frozen=True)
class BuiltBundle:
    path: Path
    manifest: Manifest
    pipeline: Pipeline
    frame: pd.DataFrame  # raw feature frame used for training


def make_frame(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A raw feature frame (float64 numeric, str categorical) and a class target."""
    rng = np.random.default_rng(seed)
    temp = rng.normal(20.0, 8.0, n)
    pressure = rng.normal(1000.0, 15.0, n)
    color = rng.choice(COLORS, n)
    score = temp + 0.05 * (pressure - 1000.0) + np.where(color == "red", 4.0, 0.0)
    target = np.where(score < 15.0, "cold", np.where(score < 25.0, "mild", "hot"))
    frame = pd.DataFrame({"temp": temp, "pressure": pressure, "color": color.astype(object)})
    return frame, target


def _preprocess() -> ColumnTransformer:
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(missing_values="", strategy="most_frequent")),
            ("encode", OneHotEncoder(handle_unknown="ignore")),
        ]
    )
    return ColumnTransformer(
        [("numeric", numeric, NUMERIC), ("categorical", categorical, CATEGORICAL)],
        sparse_threshold=0,
    )


def _profile(frame: pd.DataFrame, prediction: dict[str, Any]) -> dict[str, Any]:
    features: dict[str, Any] = {}
    for name in NUMERIC:
        col = frame[name].to_numpy(dtype=float)
        edges = np.linspace(np.nanmin(col), np.nanmax(col), 11)
        counts, _ = np.histogram(col[~np.isnan(col)], bins=edges)
        features[name] = {
            "kind": "numeric",
            "bin_edges": [float(e) for e in edges],
            "counts": [int(c) for c in counts],
            "mean": float(np.nanmean(col)),
            "std": float(np.nanstd(col)),
            "min": float(np.nanmin(col)),
            "max": float(np.nanmax(col)),
            "missing_rate": float(np.isnan(col).mean()),
        }
    for name in CATEGORICAL:
        freq = frame[name].value_counts(normalize=True)
        features[name] = {
            "kind": "categorical",
            "frequencies": {str(k): float(v) for k, v in freq.items()},
            "missing_rate": float((frame[name] == "").mean()),
        }
    return {"rows": len(frame), "features": features, "prediction": prediction}


def _inputs(frame: pd.DataFrame, nullable: bool) -> list[InputSpec]:
    specs = [
        InputSpec(
            name=n,
            kind="numeric",
            dtype="float32",
            nullable=nullable,
            min=float(frame[n].min()),
            max=float(frame[n].max()),
        )
        for n in NUMERIC
    ]
    specs += [
        InputSpec(name=n, kind="categorical", dtype="string", nullable=nullable, categories=COLORS)
        for n in CATEGORICAL
    ]
    return specs


def _to_onnx(pipe: Pipeline, model_options: dict[Any, Any] | None = None) -> bytes:
    initial = [(n, FloatTensorType([None, 1])) for n in NUMERIC]
    initial += [(n, StringTensorType([None, 1])) for n in CATEGORICAL]
    onx = convert_sklearn(pipe, initial_types=initial, target_opset={"": OPSET, "ai.onnx.ml": 3}, options=model_options)
    return bytes(onx.SerializeToString())


def _zip(path: Path, members: dict[str, bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, members[name])
    tmp.replace(path)


def make_bundle(
    out_dir: Path,
    task: str = "classification",
    *,
    name: str | None = None,
    version: int = 1,
    target: str = "x86_64",
    model: str = "logistic_regression",
    nullable: bool = True,
    n: int = 300,
    threads: int = 1,
) -> BuiltBundle:
    """Train a tiny pipeline for ``task`` and write ``<name>-<version>-<target>.edgeml``."""
    name = name or f"toy-{task}"
    frame, classes = make_frame(n)
    options: dict[Any, Any] | None = None
    if task == "classification":
        est: Any = (
            RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0)
            if model == "random_forest"
            else LogisticRegression(max_iter=500)
        )
        pipe = Pipeline([("preprocess", _preprocess()), ("model", est)])
        pipe.fit(frame, classes)
        options = {id(est): {"zipmap": False}}
        class_names = [str(c) for c in pipe.classes_]
        outputs = OutputSpec(
            label="label", probabilities="probabilities", classes=class_names, label_dtype="string"
        )
        pred = pipe.predict(frame)
        values, counts = np.unique(pred, return_counts=True)
        prediction = {
            "kind": "classification",
            "frequencies": {str(v): float(c) / len(pred) for v, c in zip(values, counts, strict=False)},
        }
    elif task == "regression":
        y = frame["temp"].to_numpy() * 2.0 + np.where(frame["color"] == "red", 5.0, 0.0)
        pipe = Pipeline([("preprocess", _preprocess()), ("model", Ridge(alpha=1.0))])
        pipe.fit(frame, y)
        outputs = OutputSpec(prediction="variable")
        pred = pipe.predict(frame)
        edges = np.linspace(pred.min(), pred.max(), 11)
        counts, _ = np.histogram(pred, bins=edges)
        prediction = {
            "kind": "regression",
            "bin_edges": [float(e) for e in edges],
            "counts": [int(c) for c in counts],
            "mean": float(pred.mean()),
            "std": float(pred.std()),
        }
    elif task == "anomaly":
        est = IsolationForest(n_estimators=20, random_state=0, contamination=0.05)
        pipe = Pipeline([("preprocess", _preprocess()), ("model", est)])
        pipe.fit(frame)
        outputs = OutputSpec(label="label", score="scores", label_dtype="int64")
        pred = pipe.predict(frame)
        prediction = {"kind": "anomaly", "anomaly_rate": float((pred == -1).mean())}
    else:
        raise ValueError(task)

    onnx_bytes = _to_onnx(pipe, options)
    head = frame.head(5)
    rows = head.to_dict(orient="records")
    expected: dict[str, Any] = {}
    if task == "classification":
        expected = {"label": [str(v) for v in pipe.predict(head)],
                    "probabilities": pipe.predict_proba(head).tolist()}
    elif task == "regression":
        expected = {"variable": pipe.predict(head).reshape(-1, 1).tolist()}
    else:
        expected = {"label": pipe.predict(head).reshape(-1, 1).tolist(),
                    "scores": pipe.decision_function(head).reshape(-1, 1).tolist()}
    selftest = {"rows": rows, "expected": expected, "atol": 1e-4}
    selftest_bytes = (json.dumps(selftest, sort_keys=True, indent=2) + "\n").encode()
    members = {MODEL: onnx_bytes, SELFTEST: selftest_bytes}
    manifest = Manifest(
        name=name,
        version=version,
        task=task,
        created_at="2026-11-28T17:00:00Z",
        edgeml_version="0.1.0",
        target=TargetInfo(name=target, arch=ARCHES.get(target, "x86_64"),
                          intra_op_threads=threads, inter_op_threads=1),
        onnx=OnnxInfo(opset=OPSET, ir_version=8, min_onnxruntime="1.16"),
        inputs=_inputs(frame, nullable),
        outputs=outputs,
        files={k: hashlib.sha256(v).hexdigest() for k, v in members.items()},
        reference_profile=_profile(frame, prediction),
    )
    members[MANIFEST] = manifest.to_json()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / manifest.filename
    _zip(path, members)
    return BuiltBundle(path=path, manifest=manifest, pipeline=pipe, frame=frame)


def rewrite_member(src: Path, dst: Path, member: str, data: bytes) -> Path:
    """Copy bundle ``src`` to ``dst`` with one member's bytes replaced (to test tampering)."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[member] = data
    _zip(dst, members)
    return dst
