"""`edgeml flash` and `edgeml agent install-service`: the tree, the unit, refusals, first boot.

The first-boot test starts a real `edgeml agent --config <flashed config>` with
``$STATE_DIRECTORY`` set to the flashed state folder (what systemd's StateDirectory= does)
and predicts over HTTP. The emulated Raspberry Pi install is tests/test_flash_arm.py.
"""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import urllib.request
import zipfile
from pathlib import Path

import pytest
import tiny_bundle
from agent_support import BROKER, ROW, make_bundle, unique_base

from edgeml.agent.config import load_config
from edgeml.agent.slots import StateDir
from edgeml.agent.unit import UNIT_NAME, unit_text
from edgeml.bundle.manifest import MANIFEST
from edgeml.errors import NotFoundError, UsageError
from edgeml.package.flash import flash
from edgeml.package.writer import file_hashes

EDGEML = [sys.executable, "-m", "edgeml"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEML, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=False)


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("flash-bundles"), version=3)


@pytest.fixture(scope="module")
def wheel_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """The tiny bundle carrying two (fake) offline wheels, as `package --offline` lays them."""
    manifest, files = tiny_bundle.members()
    del files[MANIFEST]
    wheels = {"wheels/edgeml-0.1.0-py3-none-any.whl": b"PK-edgeml",
              "wheels/click-8.5.1-py3-none-any.whl": b"PK-click"}
    files.update(wheels)
    manifest = dataclasses.replace(manifest, files=file_hashes(files),
                                   install={"method": "pypi", "offline_wheels": True})
    files[MANIFEST] = manifest.to_json()
    path = tmp_path_factory.mktemp("flash-wheels") / "tiny-wheels.edgeml"
    return tiny_bundle.write(path, files), wheels


# -- the tree ------------------------------------------------------------------------------


def test_flash_lays_out_config_committed_slot_and_unit(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "sd"
    proc = run("flash", str(bundle), "--to", str(root), "--broker", BROKER)
    assert proc.returncode == 0, proc.stderr
    assert "flashed tiny@3" in proc.stdout
    state = StateDir(root / "var/lib/edgeml")
    assert state.current() == ("a", None)
    info = state.slot_info("a")
    assert (info.status, info.name, info.version) == ("good", "tiny", 3)
    assert info.sha256 == sha(bundle) == sha(state.bundle_path("a"))  # the bundle, byte for byte
    assert state.slot_info("b").status == "empty"
    assert not (root / "var/lib/edgeml/agent.lock").exists()
    assert not list(root.rglob("*.tmp")) and not list(root.rglob(".*flash-*"))
    settings = load_config(root / "etc/edgeml/agent.yaml")  # the agent's own loader
    assert settings["broker"] == BROKER and settings["state_dir"] == "/var/lib/edgeml"
    unit = parse_unit((root / "etc/systemd/system" / UNIT_NAME).read_text())
    assert unit["Service"]["ExecStart"] == (
        "/opt/edgeml/venv/bin/edgeml agent --config /etc/edgeml/agent.yaml")
    assert not (root / "opt/edgeml/install.sh").exists()  # only with --wheels
    record = json.loads((root / "opt/edgeml/flash.json").read_text())
    assert record["bundle"] == "tiny@3" and record["sha256"] == sha(bundle)


def test_unit_text_is_a_valid_unit() -> None:
    unit = parse_unit(unit_text(["/opt/edgeml/venv/bin/edgeml"], state_dir="/var/lib/pump/ml",
                                user="pump"))
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert service["StateDirectory"] == "pump/ml"
    assert (service["User"], service["Group"]) == ("pump", "pump")
    assert "DynamicUser" not in service
    assert shlex.split(service["ExecStart"]) == [
        "/opt/edgeml/venv/bin/edgeml", "agent", "--config", "/etc/edgeml/agent.yaml"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert unit["Unit"]["After"] == "network-online.target"
    dynamic = parse_unit(unit_text(["/usr/bin/python3", "-m", "edgeml"], user=None,
                                   config="/etc/my edgeml/agent.yaml"))["Service"]
    assert dynamic["DynamicUser"] == "yes" and "User" not in dynamic
    assert shlex.split(dynamic["ExecStart"]) == [
        "/usr/bin/python3", "-m", "edgeml", "agent", "--config", "/etc/my edgeml/agent.yaml"]


def test_flash_with_wheels_writes_them_and_an_offline_install_script(
        wheel_bundle: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    path, wheels = wheel_bundle
    root = tmp_path / "img"
    result = flash(path, root, broker=BROKER, wheels=True)
    for name, data in wheels.items():
        assert (root / "opt/edgeml" / name).read_bytes() == data
    assert sorted(result.wheels) == sorted(Path(n).name for n in wheels)
    script = root / "opt/edgeml/install.sh"
    assert result.install_script == script
    assert os.access(script, os.X_OK)
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    assert '--no-index \\\n  --find-links "$HERE/wheels" edgeml' in text
    assert "useradd --system" in text and "systemctl enable --now" in text
    helped = subprocess.run(["sh", str(script), "--help"], capture_output=True, text=True,
                            check=False)
    assert helped.returncode == 0 and "--no-service" in helped.stdout
    bad = subprocess.run(["sh", str(script), "--frobnicate"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1 and "unknown option --frobnicate" in bad.stderr


def test_given_config_is_copied_as_written(bundle: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("# pump 7\ndevice_id: pump-7\nmqtt:\n  broker: mqtt://10.0.0.2\n")
    result = flash(bundle, tmp_path / "sd", config=cfg)
    assert result.config.read_text() == cfg.read_text()
    assert result.generated_config is False


# -- refusals ----------------------------------------------------------------------------


def test_non_empty_target_is_refused_unless_forced(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "sd"
    (root / "boot").mkdir(parents=True)
    (root / "boot/cmdline.txt").write_text("console=serial0\n")
    proc = run("flash", str(bundle), "--to", str(root), "--broker", BROKER)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --to {root} is not empty: give --force to write edgeml's files into it "
        "(they are replaced; nothing else is touched)"]
    assert not (root / "var").exists()
    newer = make_bundle(tmp_path / "b", version=4)
    flash(bundle, root, broker=BROKER, force=True)
    flash(newer, root, broker=BROKER, force=True)  # again: the state folder is replaced
    state = StateDir(root / "var/lib/edgeml")
    assert state.slot_info("a").version == 4 and state.current() == ("a", None)
    assert (root / "boot/cmdline.txt").read_text() == "console=serial0\n"  # left alone
    assert not list((root / "var/lib").glob(".*"))


@pytest.mark.parametrize(("config", "why"), [
    ("colour: red\nbroker: mqtt://h\n", "unknown key 'colour'"),
    ("device_id: pump-7\n", "no broker"),
    ("broker: mqtt://h\nstate_dir: /data/edgeml\n", "differs from --state-dir"),
    ("broker: mqtt://h\nbundle: /boot/first.edgeml\n", "'bundle' is set"),
])
def test_bad_config_is_refused_naming_the_file(bundle: Path, tmp_path: Path, config: str,
                                               why: str) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config)
    with pytest.raises(UsageError, match=why) as err:
        flash(bundle, tmp_path / "sd", config=cfg)
    assert str(cfg) in str(err.value)
    assert not (tmp_path / "sd").exists()  # nothing written


def test_other_refusals(bundle: Path, tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    with pytest.raises(UsageError, match="--config FILE or --broker URL"):
        flash(bundle, sd)
    with pytest.raises(UsageError, match="not under /var/lib"):
        flash(bundle, sd, broker=BROKER, state_dir="/data/edgeml")
    with pytest.raises(UsageError, match=r"carries no offline wheels.*--offline"):
        flash(bundle, sd, broker=BROKER, wheels=True)
    with pytest.raises(UsageError, match="not a valid system user"):
        flash(bundle, sd, broker=BROKER, user="Root Admin")
    with pytest.raises(NotFoundError, match="not found"):
        flash(tmp_path / "missing.edgeml", sd, broker=BROKER)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        flash(bundle, tmp_path / "file", broker=BROKER)
    corrupt = tmp_path / "corrupt.edgeml"
    members = tiny_bundle.read_members(bundle)
    with zipfile.ZipFile(corrupt, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data[:-1] + b"\0" if name == "model.onnx" else data)
    proc = run("flash", str(corrupt), "--to", str(sd), "--broker", BROKER)
    assert proc.returncode == 1 and "model.onnx" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (sd / "var/lib/edgeml").exists()


# -- first boot: the agent serves the flashed bundle -----------------------------------------


def test_agent_started_with_the_flashed_config_serves_the_bundle(bundle: Path,
                                                                 tmp_path: Path) -> None:
    base = unique_base()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"mqtt:\n  broker: {BROKER}\n  base_topic: {base}\n  device_id: flashed\n"
                   "http:\n  port: 0\n  workers: 1\n")
    root = tmp_path / "sd"
    flash(bundle, root, config=cfg)
    state = root / "var/lib/edgeml"
    # as the unit starts it: `edgeml agent --config ...` with $STATE_DIRECTORY, no --bundle
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEML_AGENT_")}
    env["STATE_DIRECTORY"] = str(state)
    log = tmp_path / "agent.err"
    with open(log, "w") as err:
        proc = subprocess.Popen([*EDGEML, "agent", "--config", str(root / "etc/edgeml/agent.yaml")],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        reader = None
        lines, reader = _lines_until(proc, "http: ", 90)
        assert lines[0] == f"agent: serving tiny@3 (classification) from slot a of {state}"
        url = next(ln for ln in lines if ln.startswith("http: ")).split("http: ", 1)[1].strip()
        body = json.dumps({"instances": [ROW]}).encode()
        req = urllib.request.Request(url + "/v1/predict", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            out = json.loads(resp.read())
        assert (out["model"]["name"], out["model"]["version"]) == ("tiny", 3)
        assert len(out["predictions"]) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        assert proc.stdout is not None
        if reader is not None:
            reader.join(10)
        proc.stdout.close()
    assert code == 0, log.read_text()
    assert StateDir(state).slot_info("a").status == "good"


def _lines_until(proc: subprocess.Popen[str], prefix: str,
                 timeout: float) -> tuple[list[str], threading.Thread]:
    """stdout lines up to the first starting with ``prefix`` (read by a thread: no hang)."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                found.set()
        found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    found.wait(timeout)
    got = list(lines)
    assert any(ln.startswith(prefix) for ln in got), f"the agent never printed {prefix!r}: {got}"
    return got, reader


# -- install-service -----------------------------------------------------------------------


def test_install_service_writes_the_same_unit_and_says_it_did_not_enable(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"broker: {BROKER}\n")
    units = tmp_path / "units"
    units.mkdir()
    env = {"PATH": str(Path(sys.executable).parent)}  # no systemctl on this PATH
    proc = run("agent", "install-service", "--config", str(cfg), "--unit-dir", str(units),
               "--user", "pump", "--enable", env=env)
    assert proc.returncode == 0, proc.stderr
    unit_file = units / UNIT_NAME
    assert proc.stdout.strip() == (f"wrote {unit_file} only: systemctl is not on this system, "
                                   "nothing was enabled")
    service = parse_unit(unit_file.read_text())["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[-3:] == ["agent", "--config", str(cfg)]
    assert Path(argv[0]).is_file()  # this installation's edgeml
    assert (service["User"], service["Restart"], service["StateDirectory"]) == (
        "pump", "always", "edgeml")
    missing = run("agent", "install-service", "--config", str(tmp_path / "nope.yaml"),
                  "--unit-dir", str(units))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


# -- install.sh, run for real (--no-service) -------------------------------------------------


def _stub_wheel() -> tuple[str, bytes]:
    """A real, installable ``edgeml`` wheel whose console script prints a version."""
    import base64
    import io

    dist = "edgeml-9.9.9.dist-info"
    files = {
        "edgeml_stub/__init__.py": b"def main():\n    print('edgeml stub 9.9.9')\n",
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: edgeml\nVersion: 9.9.9\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": b"[console_scripts]\nedgeml = edgeml_stub:main\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return "wheels/edgeml-9.9.9-py3-none-any.whl", buf.getvalue()


@pytest.mark.slow
def test_install_script_installs_from_the_wheels_with_no_index(tmp_path: Path) -> None:
    manifest, files = tiny_bundle.members()
    del files[MANIFEST]
    name, data = _stub_wheel()
    files[name] = data
    manifest = dataclasses.replace(manifest, files=file_hashes(files),
                                   install={"method": "pypi", "offline_wheels": True})
    files[MANIFEST] = manifest.to_json()
    bundle = tiny_bundle.write(tmp_path / "stub.edgeml", files)
    result = flash(bundle, tmp_path / "img", broker=BROKER, wheels=True)
    assert result.install_script is not None
    prefix = tmp_path / "prefix"
    env = {**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",  # no index reachable
           "PIP_CONFIG_FILE": os.devnull}
    proc = subprocess.run(["sh", str(result.install_script), "--no-service", "--prefix",
                           str(prefix), "--python", sys.executable], capture_output=True,
                          text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"install.sh: edgeml installed: {prefix}/venv/bin/edgeml" in proc.stdout
    assert "--no-service: no user, no unit" in proc.stdout
    ran = subprocess.run([str(prefix / "venv/bin/edgeml")], capture_output=True, text=True,
                         check=False)
    assert ran.stdout.strip() == "edgeml stub 9.9.9"
