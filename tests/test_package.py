"""`edgeml package`: registered models become verified, byte-identical bundles, or are refused
with the figures (opset, memory, quantization)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from edgeml.bundle.inspect import describe
from edgeml.bundle.manifest import MODEL, SELFTEST, Manifest, RuntimeInfo
from edgeml.bundle.reader import open_bundle
from edgeml.bundle.verify import verify_bundle
from edgeml.cli import main
from edgeml.errors import ConversionError, NotFoundError, PackagingError
from edgeml.package.builder import PackageResult, package
from edgeml.package.fit import check_opsets
from edgeml.package.keys import generate_keypair
from edgeml.package.profiles import CHECKOUT_DIR, load_profile
from edgeml.package.stages import STAGES
from edgeml.package.threads import MIN_SPEEDUP, choose, host_cores
from edgeml.train.recipe import parse_recipe
from edgeml.train.registry import Registry
from edgeml.train.workflow import train

ROOT = Path(__file__).resolve().parent.parent
PENGUINS = ROOT / "models" / "penguins.yaml"


def _recipe(name: str, candidates: list[dict[str, Any]]) -> Any:
    raw = yaml.safe_load(PENGUINS.read_text())
    raw.update(name=name, candidates=candidates, gates={})
    raw["split"]["cv"] = 2
    return parse_recipe(raw, PENGUINS)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """penguins (logistic regression) and penguins-mlp (a small MLP), trained once."""
    root = tmp_path_factory.mktemp("registry")
    quiet = Console(file=io.StringIO())
    train(_recipe("penguins", [{"family": "logistic_regression", "params": {"C": [1.0]}}]),
          registry=root, console=quiet)
    train(_recipe("penguins-mlp", [{"family": "mlp", "params": {"hidden_layer_sizes": [[64, 32]],
                                                                "max_iter": [1000]}}]),
          registry=root, console=quiet)
    return root


def _package(registry: Path, out: Path, ref: str = "penguins", **kw: Any) -> PackageResult:
    kw.setdefault("target", "x86_64")
    return package(ref, registry=registry, out_dir=out, console=Console(file=io.StringIO()), **kw)


def _stages(result: PackageResult) -> list[tuple[str, str]]:
    return [(s["name"], s["outcome"]) for s in result.manifest.build["stages"]]


def _profile_file(folder: Path, name: str, **changes: Any) -> Path:
    raw = yaml.safe_load((CHECKOUT_DIR / "rpi4.yaml").read_text())
    raw.update(name=name, **changes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_package_x86_64_and_rpi4_verify(registry: Path, tmp_path: Path) -> None:
    entry = Registry(registry).resolve("penguins")
    for target in ("x86_64", "rpi4"):
        result = _package(registry, tmp_path, target=target)
        assert result.path == tmp_path / f"penguins-1-{target}.edgeml"
        report = verify_bundle(result.path)
        assert report.ok and report.status("selftest") == "ok"
        m = open_bundle(result.path).manifest
        assert (m.name, m.version, m.task, m.target.name) == ("penguins", 1, "classification", target)
        assert m.created_at == entry.meta["created_at"]
        assert [i.name for i in m.inputs] == [f["name"] for f in entry.meta["features"]]
        assert m.outputs.classes == ["Adelie", "Chinstrap", "Gentoo"]
        assert set(m.files) == {MODEL, SELFTEST}
        assert m.metrics == entry.record.bundle_metrics()
        assert m.metrics.primary == "f1_macro" and m.metrics.holdout["f1_macro"] == \
            entry.meta["metrics"]["holdout"]["f1_macro"]
        assert m.metrics.holdout_rows == entry.meta["data"]["holdout_rows"]
        assert m.reference_profile == entry.meta["reference_profile"]
        assert m.provenance["registry_ref"] == "penguins@1"
        assert m.provenance["recipe_sha256"] == entry.meta["recipe_sha256"]
        assert m.provenance["data_sha256"] == entry.meta["data"]["sha256"]
        assert m.parity["passed"] is True and m.parity["rows"] == entry.meta["data"]["holdout_rows"]
        assert m.onnx.opset <= load_profile(target).max_opset
        assert result.memory.fits and result.memory.added_mb > 0
    rpi4 = open_bundle(tmp_path / "penguins-1-rpi4.edgeml").manifest
    # a logistic regression runs in microseconds: 4 threads never pay, so 1 is measured and kept
    assert (rpi4.runtime.intra_op_threads, rpi4.runtime.threads_chosen_by) == (1, "measured")
    assert rpi4.target.intra_op_threads == 1 and rpi4.target.memory_budget_mb == 1024
    assert rpi4.install["platform_tags"][0] == "manylinux_2_28_aarch64"
    assert "onnxruntime==1.32.0" in rpi4.install["pip_requirements"]


def test_repackaging_is_byte_identical(registry: Path, tmp_path: Path) -> None:
    """Another process, with another hash seed (so other set orders), produces the same bytes."""
    paths = [_package(registry, tmp_path / "here", target="rpi4").path]
    proc = subprocess.run(
        [sys.executable, "-m", "edgeml", "package", "penguins", "--target", "rpi4",
         "--registry", str(registry), "-o", str(tmp_path / "there")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    assert proc.returncode == 0, proc.stderr
    paths.append(tmp_path / "there" / "penguins-1-rpi4.edgeml")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with zipfile.ZipFile(paths[0]) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    created = Registry(registry).resolve("penguins").meta["created_at"]
    stamp = [int(x) for x in created[:19].replace("T", "-").replace(":", "-").split("-")]
    stamp[5] -= stamp[5] % 2  # zip timestamps have a 2-second resolution
    assert {i.date_time for i in infos} == {tuple(stamp)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}


def test_signed_package(registry: Path, tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    result = _package(registry, tmp_path, sign_key=private)
    assert result.signed and ("sign", "ok") in [(r.name, r.outcome) for r in result.stages]
    assert verify_bundle(result.path, public_key=public).status("signature") == "ok"


STAGE_NAMES = ["load", "convert", "parity", "quantize", "selftest", "threads", "fit", "wheels",
               "manifest", "sign", "write"]


def test_one_list_of_stages_for_display_manifest_and_result(registry: Path, tmp_path: Path) -> None:
    assert [s.name for s in STAGES] == STAGE_NAMES
    shown = io.StringIO()
    result = package("penguins", target="x86_64", registry=registry, out_dir=tmp_path,
                     console=Console(file=shown, width=300))
    lines = shown.getvalue().splitlines()
    assert [r.name for r in result.stages] == STAGE_NAMES and len(lines) == len(STAGES)
    assert lines[0] == "✓ load penguins (penguins@1: logistic_regression, 69 holdout rows)"
    assert lines[3] == "✓ quantization (auto) (float: no MatMul/Gemm weights to quantize)"
    assert lines[5].startswith("✓ intra-op threads, 1 or 4 (1: ")
    assert lines[7] == "- wheels for x86_64 (skipped: no --offline)"
    assert lines[9] == "- signature (skipped: no --sign-key)"
    assert lines[10] == f"✓ write the bundle ({result.path} ({result.size_bytes:,} bytes))"
    # the manifest records every stage that ran before it was written, with the outcome
    assert _stages(result) == [("load", "ok"), ("convert", "ok"), ("parity", "ok"), ("quantize", "ok"),
                               ("selftest", "ok"), ("threads", "ok"), ("fit", "ok"),
                               ("wheels", "skipped")]
    fit = result.manifest.build["stages"][6]["detail"]
    assert fit.startswith("ai.onnx 22, ai.onnx.ml ") and fit.endswith("within x86_64; memory within 4096 MiB")
    assert [s["name"] for s in result.to_dict()["stages"]] == STAGE_NAMES
    float_only = _package(registry, tmp_path / "none", quantize="none")
    assert ("quantize", "skipped") in _stages(float_only)


def test_threads_rule_needs_a_clear_margin_in_every_round() -> None:
    assert choose([1.3, 1.5, 1.4], n=4, batch=64) == (4, "4 threads 1.40x faster at batch 64 (>= 1.3x "
                                                        "in every round)")
    assert choose([1.29, 1.8, 1.9], n=4, batch=64) == (1, "4 threads 1.80x faster at batch 64 but "
                                                        "1.29x in one round")
    assert choose([1.05, 0.98, 1.0], n=2, batch=1) == (1, "2 threads only 1.00x faster at batch 1 (< 1.3x)")


def test_threads_measured_on_the_host(registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["package", "penguins", "--target", "rpi4", "--registry", str(registry),
              "-o", str(tmp_path), "--json"])
    assert exit_.value.code == 0
    threads = json.loads(capsys.readouterr().out)["threads"]
    n = min(4, host_cores())
    if n < 2:
        assert threads["reason"] == "not measured: 1 usable core on this host"
        return
    assert threads["candidates"] == [1, n] and threads["typical_batch"] == 1
    assert set(threads["median_ms"]) == {"batch 1", "batch 32"}
    assert set(threads["median_ms"]["batch 1"]) == {"1", str(n)}
    gains = threads["speedup_per_round"]
    assert len(gains) == 3
    assert threads["intra_op_threads"] == (4 if min(gains) >= MIN_SPEEDUP else 1)
    m = open_bundle(tmp_path / "penguins-1-rpi4.edgeml").manifest
    assert m.runtime == RuntimeInfo(threads["intra_op_threads"], 1, "measured")


def test_threads_from_the_profile_shown_by_inspect(registry: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _profile_file(tmp_path / "devices", "fixed", threads={"intra_op": 2, "inter_op": 1})
    result = _package(registry, tmp_path, target="fixed", devices_dir=tmp_path / "devices")
    assert result.manifest.runtime == RuntimeInfo(2, 1, "profile")
    assert result.threads.reason == "2 from the profile" and result.threads.ms == {}
    assert describe(result.path)["runtime"] == {"intra_op_threads": 2, "inter_op_threads": 1,
                                                "threads_chosen_by": "profile"}
    assert describe(result.path)["build_stages"][4:7] == ["selftest: ok", "threads: ok", "fit: ok"]
    with pytest.raises(SystemExit):
        main(["inspect", str(result.path)])
    assert "threads:  intra-op 2 (profile), inter-op 1; memory budget 1024 MiB" in capsys.readouterr().out


def test_a_manifest_without_runtime_means_one_thread(registry: Path, tmp_path: Path) -> None:
    """Bundles written before the runtime block: one intra-op thread, whatever target says."""
    result = _package(registry, tmp_path)
    with zipfile.ZipFile(result.path) as zf:
        raw = json.loads(zf.read("manifest.json"))
    del raw["runtime"], raw["build"]
    raw["target"]["intra_op_threads"] = 4
    old = Manifest.from_dict(raw)
    assert old.runtime == RuntimeInfo(1, 1, "default") and old.build == {}


def test_check_opsets_names_every_figure() -> None:
    old = load_profile("rpi-armv7")
    with pytest.raises(PackagingError) as exc:
        check_opsets({"": 23, "ai.onnx.ml": 5, "com.microsoft": 1, "my.ops": 1}, 11, old)
    msg = str(exc.value)
    assert "does not fit rpi-armv7 (onnxruntime 1.21.0)" in msg
    assert "ai.onnx opset 23 (max 22)" in msg and "ai.onnx.ml opset 5 (max 4)" in msg
    assert "IR version 11 (max 10)" in msg and "custom domain 'my.ops'" in msg
    assert "com.microsoft" not in msg
    check_opsets({"": 22, "ai.onnx.ml": 4}, 10, old)  # at the limits: fine


def test_too_new_opset_refused_at_packaging_time(registry: Path, tmp_path: Path) -> None:
    """onnxruntime's quantizer lifts the model to opset 11: above an old runtime's 9."""
    old = _profile_file(tmp_path / "devices", "old-board", onnxruntime="1.5.0", max_opset=9,
                        max_ml_opset=2, max_ir_version=7)
    out = tmp_path / "out"
    with pytest.raises(PackagingError, match=r"int8 model refused: the model does not fit old-board "
                       r"\(onnxruntime 1\.5\.0\): int8 needs ai\.onnx opset 11 \(onnxruntime's "
                       r"quantizer\), the target runs up to 9"):
        _package(registry, out, "penguins-mlp", target=str(old), quantize="int8")
    assert not out.exists() or not list(out.iterdir())
    # auto falls back to the float model, which the converter could emit at opset 9
    result = _package(registry, out, "penguins-mlp", target=str(old), quantize="auto")
    assert result.manifest.onnx.opset == 9 and not result.manifest.onnx.quantized
    assert "int8 does not fit" in result.manifest.quantization["reason"]
    assert verify_bundle(result.path).ok


def test_opset_the_converter_cannot_reach(registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _profile_file(tmp_path, "ancient", onnxruntime="1.3.0", max_opset=8, max_ml_opset=2,
                        max_ir_version=6)
    with pytest.raises(ConversionError, match=r"penguins@1 for ancient \(onnxruntime 1\.3\.0: ai\.onnx "
                       r"opset <= 8, ai\.onnx\.ml <= 2, IR <= 6\)"):
        _package(registry, tmp_path / "out", target=str(old))
    with pytest.raises(SystemExit) as exit_:
        main(["package", "penguins", "--target", str(old), "--registry", str(registry),
              "-o", str(tmp_path / "out")])
    assert exit_.value.code == 1
    assert "\nerror: penguins@1 for ancient (onnxruntime 1.3.0" in capsys.readouterr().err


def test_memory_budget_refusal_with_figures(registry: Path, tmp_path: Path) -> None:
    _profile_file(tmp_path / "devices", "tight", memory_budget_mb=82, runtime_overhead_mb=80)
    out = tmp_path / "out"
    with pytest.raises(PackagingError) as exc:
        _package(registry, out, target="tight", devices_dir=tmp_path / "devices")
    msg = str(exc.value)
    assert msg.startswith("penguins@1 does not fit tight's memory budget: loading model.onnx")
    assert "MiB in onnxruntime; with 80 MiB for the runtime process that is" in msg
    assert "over memory_budget_mb 82 (2 MiB left for a model)" in msg
    assert not out.exists() or not list(out.iterdir())


def test_quantized_mlp(registry: Path, tmp_path: Path) -> None:
    result = _package(registry, tmp_path, "penguins-mlp", quantize="auto")
    m = result.manifest
    assert m.onnx.quantized is True
    q = m.quantization
    assert q["applied"] is True and q["policy"] == "auto" and q["metric"] == "f1_macro"
    assert q["size_int8"] < q["size_float"] and q["drop_points"] <= 1.0
    report = result.quantization.report
    assert report["latency_ms_before"] > 0 and report["latency_ms_after"] > 0
    assert "latency_ms_before" not in q  # timings would break byte-identical repackaging
    assert verify_bundle(result.path).ok
    float_result = _package(registry, tmp_path / "float", "penguins-mlp", quantize="none")
    assert not float_result.manifest.onnx.quantized
    assert float_result.memory.model_bytes == q["size_float"]


def test_tree_models_are_not_quantized_by_auto(registry: Path, tmp_path: Path) -> None:
    result = _package(registry, tmp_path)  # logistic regression: LinearClassifier, no MatMul
    assert result.manifest.quantization["applied"] is False
    assert "MatMul" in result.manifest.quantization["reason"]


def test_cli_package_json_and_errors(registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["package", "penguins@1", "--target", "rpi5", "--registry", str(registry),
              "-o", str(tmp_path), "--json"])
    assert exit_.value.code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == str(tmp_path / "penguins-1-rpi5.edgeml") and data["memory"]["fits"]
    with pytest.raises(SystemExit) as exit_:
        main(["package", "penguins", "--target", "rpi9", "--registry", str(registry)])
    assert exit_.value.code == 2
    assert "unknown target 'rpi9'" in capsys.readouterr().err
    with pytest.raises(NotFoundError, match=r"no model 'nope'"):
        _package(registry, tmp_path, "nope")


GOLDEN = Path(__file__).resolve().parent / "golden" / "penguins-x86_64.manifest.json"


def _normalized(value: Any, path: str = "") -> Any:
    """Volatile values -> placeholders: floats, hashes, timestamps and library versions."""
    if path in ("created_at", "edgeml_version", "provenance.trained_with", "provenance.packaged_with"):
        return f"<{path.rsplit('.', 1)[-1]}>"
    if path == "files":
        return {k: "<sha256>" for k in sorted(value)}
    if path in ("provenance.recipe_sha256", "provenance.data_sha256"):
        return "<sha256>"
    if path == "build.stages":  # names and outcomes are the structure; details carry sizes
        return [{**s, "detail": "<detail>"} for s in value]
    if isinstance(value, dict):
        return {k: _normalized(v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(v, path) for v in value]
    if isinstance(value, float):
        return "<float>"
    return value


def test_golden_manifest(registry: Path, tmp_path: Path) -> None:
    """The manifest's structure (every key, type and stable value) matches tests/golden.

    After a deliberate format change: EDGEML_UPDATE_GOLDEN=1 pytest tests/test_package.py -k golden
    """
    result = _package(registry, tmp_path, target="x86_64")
    with zipfile.ZipFile(result.path) as zf:
        got = _normalized(json.loads(zf.read("manifest.json")))
    if os.environ.get("EDGEML_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert got == want
