"""Bundles run on a Raspberry Pi: emulated aarch64 and armv7l userlands under qemu-user.

``make test-arm`` (``pytest -m arm``). The userlands (tests/arm/userland.py) are built on first
use, about a minute, and cached in ``$EDGEML_ARM_CACHE`` or ``build/arm``:

- aarch64 (target ``rpi4``): Debian bookworm, Python 3.11, onnxruntime/numpy wheels from PyPI;
- armv7l (target ``rpi-armv7``): Debian trixie, Python 3.13, Debian's onnxruntime 1.21.

The guests have only the device-side libraries (numpy, onnxruntime, paho-mqtt, click), and see
this working tree's ``edgeml`` on their ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from arm.userland import REPO, Userland, UserlandUnavailable, ensure_userland

import edgeml

pytestmark = [pytest.mark.arm, pytest.mark.timeout(1200)]  # a cold build runs in the first test

ARCHES = ("aarch64", "armv7l")
TARGETS = {"rpi4": "aarch64", "rpi-armv7": "armv7l"}  # device profile -> userland
TARGET_OF = {arch: target for target, arch in TARGETS.items()}
ATOL = 1e-5
HOST_ONLY = ("sklearn", "skl2onnx", "onnx", "pandas", "matplotlib", "yaml", "pydantic", "rich")


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="session")
def userland_for() -> Callable[[str], Userland]:
    """``get(arch)``: the cached userland, built on first use; skips if it cannot be built."""
    built: dict[str, Userland] = {}

    def get(arch: str) -> Userland:
        if arch not in built:
            try:
                built[arch] = ensure_userland(arch)
            except UserlandUnavailable as exc:
                pytest.skip(f"no emulated {arch} userland: {exc}")
        return built[arch]

    return get


def explain(proc: subprocess.CompletedProcess[str], who: str = "guest") -> str:
    """For assertion messages: the command, its exit code, the ends of stdout and stderr."""
    argv = " ".join(str(a) for a in proc.args)
    return f"{who}: {argv}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def host_edgeml(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The host CLI, as a user runs it: ``.venv/bin/edgeml ARGS``."""
    script = Path(sys.executable).with_name("edgeml")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "edgeml"]
    return subprocess.run(
        [*argv, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def guest_edgeml(land: Userland, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The device CLI on the emulated Pi: ``python3 -m edgeml ARGS``."""
    return land.run_python(["-m", "edgeml", *args], cwd=cwd)


def assert_same(host: Any, guest: Any, where: str = "$") -> None:
    """Equal JSON values: floats within ATOL, everything else (labels, keys, lengths) exactly."""
    if isinstance(host, bool) or isinstance(guest, bool):
        assert host is guest, f"{where}: host {host!r}, device {guest!r}"
    elif isinstance(host, float) or isinstance(guest, float):
        assert isinstance(host, (int, float)) and isinstance(guest, (int, float)), where
        same = math.isclose(host, guest, rel_tol=0, abs_tol=ATOL)
        assert same or (math.isnan(host) and math.isnan(guest)), (
            f"{where}: host {host!r}, device {guest!r} (differ by more than {ATOL})"
        )
    elif isinstance(host, dict) and isinstance(guest, dict):
        assert sorted(host) == sorted(guest), (
            f"{where}: keys differ: {sorted(host)} {sorted(guest)}"
        )
        for key in host:
            assert_same(host[key], guest[key], f"{where}.{key}")
    elif isinstance(host, list) and isinstance(guest, list):
        assert len(host) == len(guest), f"{where}: host has {len(host)} items, device {len(guest)}"
        for i, (h, g) in enumerate(zip(host, guest, strict=True)):
            assert_same(h, g, f"{where}[{i}]")
    else:
        assert host == guest, f"{where}: host {host!r}, device {guest!r}"


# -- the userlands themselves ----------------------------------------------------------------

GUEST_SMOKE = """
import json, platform, sys
from importlib.metadata import version
import numpy as np, onnxruntime as ort
import click, paho.mqtt.client, edgeml
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
outputs = session.run(None, {session.get_inputs()[0].name: np.load(sys.argv[2])})
print(json.dumps({
    "machine": platform.machine(), "python": platform.python_version(),
    "onnxruntime": ort.__version__, "edgeml": edgeml.__version__,
    "paho-mqtt": version("paho-mqtt"), "click": version("click"),
    "outputs": {o.name: v.tolist() for o, v in zip(session.get_outputs(), outputs)},
}))
"""


@pytest.fixture(scope="module")
def iris_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[np.ndarray]]:
    """A LogisticRegression on iris as ONNX (opset 15), its input as .npy, the host's outputs."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("arm-smoke")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    onx = to_onnx(
        model, x[:1], target_opset={"": 15, "ai.onnx.ml": 1}, options={id(model): {"zipmap": False}}
    )
    model_path, x_path = folder / "iris.onnx", folder / "x.npy"
    model_path.write_bytes(onx.SerializeToString())
    np.save(x_path, x)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return model_path, x_path, session.run(None, {session.get_inputs()[0].name: x})


@pytest.mark.parametrize("arch", ARCHES)
def test_guest_onnxruntime_matches_host(
    arch: str,
    userland_for: Callable[[str], Userland],
    iris_onnx: tuple[Path, Path, list[np.ndarray]],
    tmp_path: Path,
) -> None:
    land = userland_for(arch)
    model_path, x_path, host_outputs = iris_onnx
    proc = land.run_python(["-c", GUEST_SMOKE, str(model_path), str(x_path)], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    guest = json.loads(proc.stdout)
    assert guest["machine"] == arch
    assert guest["edgeml"] == edgeml.__version__
    assert int(guest["paho-mqtt"].split(".")[0]) >= 2
    if arch == "armv7l":
        assert guest["onnxruntime"].startswith("1.21"), guest["onnxruntime"]
        assert guest["python"].startswith("3.13")
    else:
        assert guest["python"].startswith("3.11")
    label, probabilities = (np.asarray(v) for v in guest["outputs"].values())
    np.testing.assert_array_equal(label, host_outputs[0])
    np.testing.assert_allclose(probabilities, host_outputs[1], rtol=0, atol=ATOL)


GUEST_DEVICE_SIDE = """
import importlib.util, json, sys
import edgeml.cli
host_only = sys.argv[1:]
print(json.dumps({"installed": [m for m in host_only if importlib.util.find_spec(m)],
                  "commands": sorted(edgeml.cli.cli.commands)}))
"""


@pytest.mark.parametrize("arch", ARCHES)
def test_device_cli_loads_without_host_libraries(
    arch: str, userland_for: Callable[[str], Userland], tmp_path: Path
) -> None:
    """The guest has no host libraries, and the whole CLI still imports (house rule)."""
    land = userland_for(arch)
    proc = land.run_python(["-c", GUEST_DEVICE_SIDE, *HOST_ONLY], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert json.loads(proc.stdout)["installed"] == []
    version = land.run_python(["-m", "edgeml", "--version"], cwd=tmp_path)
    assert version.returncode == 0, explain(version)
    assert edgeml.__version__ in version.stdout


# -- bundles: trained and packaged on the host, verified and served on the device ------------


@pytest.fixture(scope="module")
def iris_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``edgeml train models/iris.yaml`` into a fresh registry."""
    registry = tmp_path_factory.mktemp("arm-registry") / "registry"
    recipe = str(REPO / "models" / "iris.yaml")
    proc = host_edgeml("train", recipe, "--registry", str(registry), cwd=registry.parent)
    assert proc.returncode == 0, explain(proc, "host")
    return registry


@pytest.fixture(scope="module")
def iris_bundle(
    iris_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """``get(target)``: ``edgeml package iris --target TARGET``, the bundle file it wrote."""
    made: dict[str, Path] = {}

    def get(target: str) -> Path:
        if target not in made:
            out = tmp_path_factory.mktemp(f"arm-bundle-{target}") / "out"
            proc = host_edgeml(
                "package", "iris", "--target", target, "--registry", str(iris_registry),
                "-o", str(out), cwd=out.parent,
            )  # fmt: skip
            assert proc.returncode == 0, explain(proc, "host")
            found = sorted(out.glob(f"iris-*-{target}.edgeml"))
            assert len(found) == 1, f"expected one iris-<version>-{target}.edgeml in {out}: {found}"
            made[target] = found[0]
        return made[target]

    return get


def bundle_rows(bundle: Path) -> list[dict[str, Any]]:
    """Rows to predict: the bundle's self-test rows, plus rows at the edges of each feature."""
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        rows: list[dict[str, Any]] = list(json.loads(zf.read("selftest.json"))["rows"])

    def value(spec: dict[str, Any], where: str) -> Any:
        if spec["kind"] == "numeric":
            lo, hi = spec.get("min"), spec.get("max")
            if lo is None or hi is None:
                return 0.0
            return {"min": lo, "max": hi, "mid": (lo + hi) / 2}[where]
        categories = spec.get("categories") or [""]
        return categories[0] if where == "min" else categories[-1]

    for where in ("min", "mid", "max"):
        rows.append({spec["name"]: value(spec, where) for spec in manifest["inputs"]})
    first = manifest["inputs"][0]
    if first.get("nullable", True):  # a missing value, imputed by the model
        rows.append({**rows[-1], first["name"]: None})
    return rows


def assert_verifies(land: Userland, bundle: Path, *, cwd: Path) -> dict[str, Any]:
    """``edgeml verify BUNDLE --json`` on the device: exit 0, the model loaded and self-tested."""
    proc = guest_edgeml(land, "verify", str(bundle), "--json", cwd=cwd)
    assert proc.returncode == 0, explain(proc)
    report: dict[str, Any] = json.loads(proc.stdout)
    assert report["ok"] is True, report
    status = {check["name"]: check["status"] for check in report["checks"]}
    assert status["model"] == status["selftest"] == "ok", report
    return report


@pytest.mark.parametrize("arch", ARCHES)
def test_bundle_with_string_inputs_verifies_on_device(
    arch: str, userland_for: Callable[[str], Userland], tmp_path: Path
) -> None:
    """A hand-made bundle with a categorical (string tensor) input, no CLI involved."""
    land = userland_for(arch)
    from bundle_factory import make_bundle

    built = make_bundle(tmp_path / "bundles", target=TARGET_OF[arch])
    assert any(spec.dtype == "string" for spec in built.manifest.inputs)
    assert_verifies(land, built.path, cwd=tmp_path)


@pytest.mark.parametrize("target", TARGETS)
def test_bundle_verifies_on_device(
    target: str,
    userland_for: Callable[[str], Userland],
    iris_bundle: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    land = userland_for(TARGETS[target])
    bundle = iris_bundle(target)
    assert_verifies(land, bundle, cwd=tmp_path)


@pytest.mark.parametrize("target", TARGETS)
def test_bundle_predicts_on_device_as_on_host(
    target: str,
    userland_for: Callable[[str], Userland],
    iris_bundle: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    land = userland_for(TARGETS[target])
    bundle = iris_bundle(target)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in bundle_rows(bundle)))
    args = ("predict", str(bundle), "--input", str(rows), "--json")
    host = host_edgeml(*args, cwd=tmp_path)
    assert host.returncode == 0, explain(host, "host")
    guest = guest_edgeml(land, *args, cwd=tmp_path)
    assert guest.returncode == 0, explain(guest)
    host_result, guest_result = json.loads(host.stdout), json.loads(guest.stdout)
    assert isinstance(host_result, dict)
    assert_same(host_result, guest_result)


@pytest.mark.parametrize("target", TARGETS)
def test_tampered_bundle_is_rejected_on_device(
    target: str,
    userland_for: Callable[[str], Userland],
    iris_bundle: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """A model.onnx that no longer matches the manifest's checksum: exit 1, one error line."""
    land = userland_for(TARGETS[target])
    bundle = iris_bundle(target)
    tampered = tmp_path / bundle.name
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "model.onnx":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            dst.writestr(info, data)
    proc = guest_edgeml(land, "verify", str(tampered), "--json", cwd=tmp_path)
    assert proc.returncode == 1, explain(proc)
    assert json.loads(proc.stdout)["ok"] is False
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, explain(proc)
    assert "model.onnx" in errors[0]
    assert "Traceback" not in proc.stderr


# -- timestamps as features: derived on the device from the raw strings -----------------------

TIMESTAMPS = ["2024-02-29T12:00:00Z", "2023-12-31T23:30:00-01:00", "2024-12-31T23:59:59+05:30",
              "2025-01-01", 1709208000, 1704067199.5, None]


@pytest.fixture(scope="module")
def load_bundle(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``get(target)``: models/machine-load.yaml trained and packaged on the host for TARGET."""
    registry = tmp_path_factory.mktemp("arm-load-registry") / "registry"
    proc = host_edgeml("train", str(REPO / "models" / "machine-load.yaml"), "--registry",
                       str(registry), cwd=registry.parent)
    assert proc.returncode == 0, explain(proc, "host")
    made: dict[str, Path] = {}

    def get(target: str) -> Path:
        if target not in made:
            out = tmp_path_factory.mktemp(f"arm-load-{target}") / "out"
            proc = host_edgeml("package", "machine-load", "--target", target, "--registry",
                               str(registry), "-o", str(out), cwd=out.parent)
            assert proc.returncode == 0, explain(proc, "host")
            made[target] = next(out.glob(f"machine-load-*-{target}.edgeml"))
        return made[target]

    return get


@pytest.mark.parametrize("target", TARGETS)
def test_timestamp_bundle_verifies_and_predicts_on_device_as_on_host(
    target: str, userland_for: Callable[[str], Userland], load_bundle: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    land = userland_for(TARGETS[target])
    bundle = load_bundle(target)
    assert_verifies(land, bundle, cwd=tmp_path)  # the self-test rows carry raw timestamps
    with zipfile.ZipFile(bundle) as zf:
        rows = list(json.loads(zf.read("selftest.json"))["rows"])
    rows += [{**rows[0], "timestamp": ts} for ts in TIMESTAMPS]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ("predict", str(bundle), "--input", str(path), "--json")
    host = host_edgeml(*args, cwd=tmp_path)
    assert host.returncode == 0, explain(host, "host")
    guest = guest_edgeml(land, *args, cwd=tmp_path)
    assert guest.returncode == 0, explain(guest)
    assert_same(json.loads(host.stdout), json.loads(guest.stdout))


@pytest.mark.parametrize("arch", ARCHES)
def test_device_derives_the_same_features_as_the_host(
    arch: str, userland_for: Callable[[str], Userland], tmp_path: Path
) -> None:
    """edgeml.bundle.derive on the emulated Pi: what the host computes (calendar fields exactly,
    sin/cos to 1e-12: another libm may round the last bit differently)."""
    from edgeml.bundle.derive import derive_columns
    from edgeml.bundle.manifest import DATETIME_FEATURES, DerivedInput

    land = userland_for(arch)
    code = (
        "import json, sys\n"
        "from edgeml.bundle.derive import derive_columns\n"
        "from edgeml.bundle.manifest import DATETIME_FEATURES, DerivedInput\n"
        "spec = DerivedInput(source='ts', features=list(DATETIME_FEATURES))\n"
        "got = derive_columns([spec], {'ts': json.loads(sys.argv[1])})\n"
        "print(json.dumps({k: [float(x) for x in v] for k, v in got.items()}))\n"
    )
    proc = land.run_python(["-c", code, json.dumps(TIMESTAMPS)], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    spec = DerivedInput(source="ts", features=list(DATETIME_FEATURES))
    host = derive_columns([spec], {"ts": TIMESTAMPS})
    guest = json.loads(proc.stdout)
    assert list(guest) == list(host)
    for name, values in host.items():
        exact = not name.endswith(("_sin", "_cos"))
        np.testing.assert_allclose(guest[name], values, rtol=0, atol=0 if exact else 1e-12,
                                   err_msg=f"{arch}: {name}")
