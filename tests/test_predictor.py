"""Predictor: loading and verifying bundles, predicting rows and columns, input errors,
parity with scikit-learn, the fast path's equivalence with to_feeds, and `edgeml predict`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_factory import make_bundle, rewrite_member
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_bundles import real_bundle

from edgeml.bundle.feeds import rows_to_columns, to_feeds
from edgeml.errors import BundleError, InputError, NotFoundError, SignatureError
from edgeml.package.keys import generate_keypair, sign_manifest
from edgeml.runtime.predictor import Predictor

PENGUIN = {"island": "Dream", "bill_length_mm": 41.5, "bill_depth_mm": 18.5,
           "flipper_length_mm": 201.0, "body_mass_g": 4000.0, "sex": "male"}


@pytest.fixture(scope="module")
def penguins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return real_bundle(tmp_path_factory, "penguins")


@pytest.fixture(scope="module")
def predictor(penguins: tuple[Path, Path]) -> Predictor:
    return Predictor(penguins[0])


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """A model whose features all refuse missing values."""
    built = make_bundle(tmp_path_factory.mktemp("strict"), "classification", nullable=False)
    return Predictor(built.path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("toy")
    return {task: make_bundle(root / task, task) for task in ("classification", "regression", "anomaly")}


# -- parity with scikit-learn on the real penguins model --------------------------------


def test_penguins_matches_the_scikit_learn_pipeline(penguins: tuple[Path, Path],
                                                    predictor: Predictor) -> None:
    from edgeml.train.registry import Registry

    entry = Registry(penguins[1]).resolve("penguins")
    X, _ = entry.load_holdout()
    pipeline = entry.load_pipeline()
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in X.to_dict(orient="records")]
    prediction = predictor.predict(rows)
    assert prediction.labels == [str(v) for v in pipeline.predict(X)]
    assert prediction.classes == [str(c) for c in pipeline.classes_]
    np.testing.assert_allclose(prediction.probabilities, pipeline.predict_proba(X), atol=1e-4)


def test_rows_and_columns_give_the_same_prediction(predictor: Predictor) -> None:
    rows = [PENGUIN, {**PENGUIN, "island": "Biscoe", "body_mass_g": 5500.0, "sex": None}]
    by_rows = predictor.predict(rows)
    by_columns = predictor.predict(rows_to_columns(rows))
    assert by_rows.labels == by_columns.labels
    np.testing.assert_array_equal(by_rows.probabilities, by_columns.probabilities)


def test_prediction_rows_and_to_dict(predictor: Predictor) -> None:
    out = predictor.predict([PENGUIN]).to_dict()
    assert out["task"] == "classification"
    assert out["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    (row,) = out["predictions"]
    assert row["label"] == "Adelie"
    assert set(row["probabilities"]) == set(out["classes"])
    assert math.isclose(sum(row["probabilities"].values()), 1.0, abs_tol=1e-5)
    json.dumps(out, allow_nan=False)


def test_regression_and_anomaly_match_scikit_learn(toy: dict[str, Any]) -> None:
    frame = toy["regression"].frame.head(30)
    rows = frame.to_dict(orient="records")
    values = Predictor(toy["regression"].path).predict(rows).values
    assert values is not None
    np.testing.assert_allclose(values, toy["regression"].pipeline.predict(frame), rtol=1e-4)
    built = toy["anomaly"]
    prediction = Predictor(built.path).predict(built.frame.to_dict(orient="records"))
    expected = ["anomaly" if v == -1 else "normal" for v in built.pipeline.predict(built.frame)]
    assert prediction.labels == expected
    assert "anomaly" in expected
    np.testing.assert_allclose(prediction.scores, built.pipeline.decision_function(built.frame),
                               atol=1e-4)
    assert prediction.rows()[0].keys() == {"label", "score"}


# -- input errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{**PENGUIN, "colour": "red"}], "unknown feature 'colour'"),
        ([{k: v for k, v in PENGUIN.items() if k != "sex"}], "missing feature 'sex'"),
        ([{**PENGUIN, "body_mass_g": "heavy"}], "feature 'body_mass_g' row 0: expected a number"),
        ([{**PENGUIN, "body_mass_g": True}], "feature 'body_mass_g' row 0: expected a number"),
        ([{**PENGUIN, "island": 3}], "feature 'island' row 0: expected a string"),
        ([PENGUIN, {**PENGUIN, "bill_depth_mm": math.inf}], "feature 'bill_depth_mm' row 1"),
        ([{**PENGUIN, "bill_depth_mm": 1e300}], "outside float32 range"),
        ([{**PENGUIN, "bill_depth_mm": 10**400}], "outside float32 range"),
        ([], "empty batch"),
        ([PENGUIN, "not a row"], "row 1: expected an object"),
    ],
)
def test_bad_input_raises_input_error_naming_the_problem(
    predictor: Predictor, rows: list[Any], message: str
) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        predictor.predict(rows)


def test_missing_values_are_refused_when_the_schema_says_so(tmp_path: Path) -> None:
    built = make_bundle(tmp_path, "classification", nullable=False)
    p = Predictor(built.path)
    row = {"temp": 20.0, "pressure": 1000.0, "color": "red"}
    assert p.predict([row]).labels is not None
    with pytest.raises(InputError, match="feature 'temp' row 0: missing value"):
        p.predict([{**row, "temp": None}])
    with pytest.raises(InputError, match="feature 'temp' row 1: missing value"):
        p.predict([row, {**row, "temp": math.nan}])
    with pytest.raises(InputError, match="feature 'color' row 0: missing value"):
        p.predict([{**row, "color": ""}])


def test_columns_of_unequal_length_are_refused(predictor: Predictor) -> None:
    columns: dict[str, Any] = {k: [v, v] for k, v in PENGUIN.items()}
    columns["sex"] = ["male"]
    with pytest.raises(InputError, match="feature 'sex': has 1 values, expected 2"):
        predictor.predict(columns)


# -- the fast path builds exactly what to_feeds builds ------------------------------------

_numbers = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=False, width=32),
                     st.integers(-10**6, 10**6))
_strings = st.one_of(st.none(), st.sampled_from(["Dream", "Biscoe", "Torgersen", "", "Mars"]))
_row = st.fixed_dictionaries({
    "island": _strings, "bill_length_mm": _numbers, "bill_depth_mm": _numbers,
    "flipper_length_mm": _numbers, "body_mass_g": _numbers,
    "sex": st.one_of(st.none(), st.sampled_from(["male", "female", ""])),
})


def _assert_same_feeds(predictor: Predictor, rows: list[dict[str, Any]]) -> None:
    """predictor.feeds (fast path or not) builds exactly what to_feeds builds, or fails alike."""
    try:
        with np.errstate(over="ignore"):  # to_feeds warns when a value overflows float32
            reference = to_feeds(predictor.inputs, rows_to_columns(rows))
    except InputError:
        reference = None
    finite = reference is not None and all(
        not np.isinf(a).any() for a in reference.values() if a.dtype != object)
    for data in (rows, rows_to_columns(rows)):
        if not finite:
            with pytest.raises(InputError):
                predictor.feeds(data)
            continue
        assert reference is not None
        fast = predictor.feeds(data)
        assert fast.keys() == reference.keys()
        for name, want in reference.items():
            got = fast[name]
            assert got.shape == want.shape == (len(rows), 1)
            assert got.dtype == want.dtype
            if want.dtype == object:
                assert got.tolist() == want.tolist()
            else:
                np.testing.assert_array_equal(got, want)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_row, min_size=1, max_size=5))
def test_fast_feeds_equal_to_feeds(predictor: Predictor, rows: list[dict[str, Any]]) -> None:
    _assert_same_feeds(predictor, rows)


_strict_number = st.one_of(_numbers, st.sampled_from([math.inf, -math.inf, 1e39, 3.4e38]))
_strict_row = st.fixed_dictionaries({
    "temp": _strict_number, "pressure": _strict_number,
    "color": st.one_of(st.none(), st.sampled_from(["red", "green", "", "violet"])),
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_strict_row, min_size=1, max_size=5))
def test_fast_feeds_equal_to_feeds_without_missing_values(
    strict: Predictor, rows: list[dict[str, Any]]
) -> None:
    _assert_same_feeds(strict, rows)


# -- loading and verification ---------------------------------------------------------------


def _with_runtime(src: Path, dst: Path, runtime: dict[str, Any] | None) -> Path:
    """``src`` with the manifest's ``runtime`` block replaced (None: removed)."""
    with zipfile.ZipFile(src) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    manifest.pop("runtime", None)
    if runtime is not None:
        manifest["runtime"] = runtime
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return rewrite_member(src, dst, "manifest.json", data)


def _spinning(p: Predictor) -> str | None:
    try:
        return str(p.session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning"))
    except RuntimeError:  # not set: onnxruntime's default, spinning on
        return None


def test_threads_come_from_the_manifest_and_never_spin(
    penguins: tuple[Path, Path], tmp_path: Path
) -> None:
    silent = Predictor(_with_runtime(penguins[0], tmp_path / "none.edgeml", None))
    assert silent.intra_op_threads == 1  # nothing said: one thread
    assert silent.session.get_session_options().intra_op_num_threads == 1
    assert _spinning(silent) is None  # one thread has no pool to spin

    two = Predictor(_with_runtime(penguins[0], tmp_path / "two.edgeml",
                                  {"intra_op_threads": 2, "inter_op_threads": 1,
                                   "threads_chosen_by": "measured"}))
    assert two.session.get_session_options().intra_op_num_threads == 2
    assert _spinning(two) == "0"  # a pool that busy-waits would hold a core between runs
    assert two.predict([PENGUIN]).rows() == silent.predict([PENGUIN]).rows()

    forced = Predictor(penguins[0], intra_op_threads=3)  # edgeml serve --threads 3
    assert forced.session.get_session_options().intra_op_num_threads == 3
    assert _spinning(forced) == "0"
    assert forced.info()["sha256"] == forced.manifest.files["model.onnx"]


def test_metadata_follows_the_open_inference_protocol(predictor: Predictor) -> None:
    meta = predictor.metadata()
    assert meta["name"] == "penguins" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "island", "datatype": "BYTES", "shape": [-1, 1]}
    assert {"name": "body_mass_g", "datatype": "FP32", "shape": [-1, 1]} in meta["inputs"]
    assert meta["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]


def test_a_tampered_member_is_refused(toy: dict[str, Any], tmp_path: Path) -> None:
    src = toy["classification"].path
    with zipfile.ZipFile(src) as zf:
        selftest = zf.read("selftest.json")
    bad = rewrite_member(src, tmp_path / src.name, "selftest.json", selftest + b" ")
    with pytest.raises(BundleError, match=r"selftest\.json: sha256 mismatch"):
        Predictor(bad)
    Predictor(bad, verify=False)  # only the model's own checksum is checked then


def test_a_tampered_model_is_refused_even_without_verification(toy: dict[str, Any],
                                                               tmp_path: Path) -> None:
    src = toy["regression"].path
    other = zipfile.ZipFile(toy["anomaly"].path).read("model.onnx")
    bad = rewrite_member(src, tmp_path / src.name, "model.onnx", other)
    with pytest.raises(BundleError, match=r"model\.onnx"):
        Predictor(bad, verify=False)


def test_signature_is_checked_when_a_key_is_given(toy: dict[str, Any], tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    _, other_public = generate_keypair(tmp_path / "other")
    src = toy["classification"].path
    manifest = zipfile.ZipFile(src).read("manifest.json")
    signed = rewrite_member(src, tmp_path / "signed.edgeml", "manifest.sig",
                            sign_manifest(manifest, private))
    assert Predictor(signed, public_key=public).manifest.name == "toy-classification"
    with pytest.raises(SignatureError):
        Predictor(signed, public_key=other_public)
    with pytest.raises(SignatureError, match="not signed"):
        Predictor(src, public_key=public)


def test_missing_or_broken_bundle(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        Predictor(tmp_path / "nope.edgeml")
    junk = tmp_path / "junk.edgeml"
    junk.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a zip archive"):
        Predictor(junk)


# -- edgeml predict ---------------------------------------------------------------------------


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeml", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_predict_command_json_matches_the_predictor(penguins: tuple[Path, Path],
                                                    predictor: Predictor, tmp_path: Path) -> None:
    rows = [PENGUIN, {**PENGUIN, "island": "Biscoe", "body_mass_g": 5600.0, "bill_depth_mm": 14.0}]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    proc = _cli("predict", str(penguins[0]), "--input", str(jsonl), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model"] == {"name": "penguins", "version": 1, "target": "x86_64",
                            "task": "classification"}
    assert out["predictions"] == json.loads(json.dumps(predictor.predict(rows).rows()))
    # a JSON list on stdin gives the same answer; the table names the labels
    proc = _cli("predict", str(penguins[0]), "-i", "-", stdin=json.dumps(rows))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "penguins@1 (x86_64)"
    assert lines[1].split() == ["row", "label", "Adelie", "Chinstrap", "Gentoo"]
    assert [ln.split()[1] for ln in lines[2:]] == [p["label"] for p in out["predictions"]]


def test_predict_command_errors(penguins: tuple[Path, Path], tmp_path: Path) -> None:
    proc = _cli("predict", str(penguins[0]), "-i", "-", stdin='{"island": "Dream", "x": 1}\n')
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown feature 'x'")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PENGUIN) + "\n{oops\n")
    proc = _cli("predict", str(penguins[0]), "-i", str(bad))
    assert proc.returncode == 2
    assert f"error: {bad} line 2: not valid JSON" in proc.stderr
    proc = _cli("predict", str(tmp_path / "nope.edgeml"), "-i", str(bad))
    assert proc.returncode == 2 and "bundle not found" in proc.stderr
    assert "Traceback" not in proc.stderr
