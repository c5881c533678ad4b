"""`edgeml flash --wheels` into a folder, installed on an emulated Raspberry Pi 4 with no network.

``make test-arm`` (``pytest -m arm``), about two minutes warm: the bundle is packaged on the
host for ``rpi4`` with ``--offline`` (its wheels: onnxruntime, numpy, paho-mqtt, click and an
edgeml wheel built from this checkout), flashed into a folder, then the emulated aarch64 userland
(tests/arm/userland.py) does what ``install.sh --no-service`` does -- a venv, then the
``pip install --no-index --find-links <folder>/wheels edgeml`` the script contains -- inside a
network namespace with no network at all (``unshare -n``). The agent is then started from that
venv (no ``PYTHONPATH``: not the working tree's edgeml) with the flashed config and
``$STATE_DIRECTORY`` = the flashed state folder, as the unit starts it, and must serve the
bundle over HTTP.

qemu-user cannot run the shell script itself (the guest's sh cannot exec the guest's python
without binfmt_misc), nor useradd/systemd: the script's steps are run one by one instead, and
the test asserts the script contains that same pip command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from agent_support import BROKER, unique_base
from arm.userland import REPO, Userland, UserlandUnavailable, cache_dir, ensure_userland

from edgeml.agent.slots import StateDir

pytestmark = [pytest.mark.arm, pytest.mark.timeout(1500)]

ROW = {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4,
       "petal width (cm)": 0.2}


def host_edgeml(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("edgeml")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "edgeml"]
    return subprocess.run([*argv, *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          check=False)


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"{' '.join(map(str, proc.args))}\nexit {proc.returncode}\n" \
           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def land() -> Userland:
    try:
        return ensure_userland("aarch64")
    except UserlandUnavailable as exc:
        pytest.skip(f"no emulated aarch64 userland: {exc}")


def pip_wheel() -> Path:
    """A pip wheel for the guest, which has no pip (Debian's python3 without python3-pip):
    install.sh uses a ``pip-*.whl`` put into ``wheels/`` then. Downloaded once into the cache."""
    folder = cache_dir() / "pip-wheel"
    found = sorted(folder.glob("pip-*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                               "--only-binary=:all:", "-d", str(folder), "pip"],
                              capture_output=True, text=True, timeout=300, check=False)
        found = sorted(folder.glob("pip-*.whl"))
        if not found:
            pytest.skip(f"cannot download a pip wheel for the guest: {proc.stderr[-500:]}")
    return found[-1]


def offline(argv: list[str]) -> list[str]:
    """``argv`` in a new network namespace (no interface up: no network at all)."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("cutting the network needs unshare -n as root")
    return [unshare, "-n", *argv]


def test_flashed_folder_installs_offline_on_the_pi_and_the_agent_serves(
        land: Userland, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    proc = host_edgeml("train", str(REPO / "models" / "iris.yaml"), "--registry", str(registry),
                       cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    proc = host_edgeml("package", "iris", "--target", "rpi4", "--offline", "--registry",
                       str(registry), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    bundle = next((tmp_path / "out").glob("iris-*-rpi4.edgeml"))

    base = unique_base()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"mqtt:\n  broker: {BROKER}\n  base_topic: {base}\n  device_id: pi-1\n"
                   "http:\n  port: 0\n  workers: 1\n")
    image = tmp_path / "image"
    proc = host_edgeml("flash", str(bundle), "--to", str(image), "--config", str(cfg),
                       "--wheels", "--json", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    flashed = json.loads(proc.stdout)
    wheels = image / "opt/edgeml/wheels"
    assert any(w.startswith("onnxruntime-") and "aarch64" in w for w in flashed["wheels"])
    assert any(w.startswith("edgeml-") for w in flashed["wheels"])
    script = (image / "opt/edgeml/install.sh").read_text()
    assert '--no-index \\\n  --find-links "$HERE/wheels" edgeml' in script
    shutil.copy(pip_wheel(), wheels)  # the "pip-*.whl put into wheels/" case of install.sh

    # install.sh --no-service, step by step, in the guest, with no network
    venv = tmp_path / "venv"
    proc = land.run_python(["-m", "venv", "--without-pip", "--copies", str(venv)], cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    py = venv / "bin" / "python"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "TMPDIR": str(tmp_path)}
    pip = [str(next(wheels.glob("pip-*.whl")) / "pip"), "install", "--disable-pip-version-check",
           "--no-input", "--no-index", "--find-links", str(wheels), "edgeml"]
    started = time.monotonic()
    proc = subprocess.run(offline([land.qemu, "-L", str(land.root), str(py), *pip]),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, explain(proc)
    print(f"pip install in the guest: {time.monotonic() - started:.0f} s")
    probe = subprocess.run(
        [land.qemu, "-L", str(land.root), str(py), "-c",
         "import platform, edgeml, onnxruntime; print(platform.machine(), edgeml.__file__, "
         "onnxruntime.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert probe.returncode == 0, explain(probe)
    machine, edgeml_file, ort_file = probe.stdout.split()
    assert machine == "aarch64"
    assert edgeml_file.startswith(str(venv)) and ort_file.startswith(str(venv)), probe.stdout

    # first boot, as the unit runs it: <venv>/bin/edgeml agent --config ..., $STATE_DIRECTORY
    state = image / "var/lib/edgeml"
    agent_env = {**env, "STATE_DIRECTORY": str(state), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "agent.err"
    with open(log, "w") as err:
        agent = subprocess.Popen(
            [land.qemu, "-L", str(land.root), str(py), str(venv / "bin" / "edgeml"), "agent",
             "--config", str(image / "etc/edgeml/agent.yaml")],
            cwd=tmp_path, env=agent_env, stdout=subprocess.PIPE, stderr=err, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert agent.stdout is not None
        for line in agent.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("http: "):
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        ready.wait(300)
        got = list(lines)
        http = [ln for ln in got if ln.startswith("http: ")]
        assert http, f"the agent did not serve: {got}\n{log.read_text()[-3000:]}"
        assert got[0] == f"agent: serving iris@1 (classification) from slot a of {state}"
        url = http[0].split("http: ", 1)[1].strip()
        body = json.dumps({"instances": [ROW]}).encode()
        req = urllib.request.Request(url + "/v1/predict", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            out = json.loads(resp.read())
        assert (out["model"]["name"], out["model"]["version"]) == ("iris", 1)
        assert out["predictions"][0]["label"] == "setosa", out
    finally:
        agent.terminate()
        try:
            code = agent.wait(60)
        except subprocess.TimeoutExpired:
            agent.kill()
            code = agent.wait(10)
        reader.join(10)
        assert agent.stdout is not None
        agent.stdout.close()
    assert code == 0, log.read_text()[-3000:]
    assert StateDir(state).slot_info("a").status == "good"

