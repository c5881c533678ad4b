"""The device side loads no host library.

Every module of the device packages (edgeml.bundle, edgeml.runtime, and edgeml.agent once
it exists: found with pkgutil.walk_packages, so new modules are covered without editing
this file) is imported in a fresh interpreter, and every device command of the CLI is run
with --help (and `verify`/`inspect` on a real signed bundle); none of them may leave a host
library in sys.modules.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgeml.cli import cli

FORBIDDEN = ("sklearn", "skl2onnx", "onnx", "onnxmltools", "pandas", "scipy", "matplotlib",
             "pyarrow", "joblib", "yaml", "pydantic", "rich", "jinja2", "sqlalchemy", "alembic",
             "psycopg", "starlette", "uvicorn", "httpx", "palmerpenguins")
DEVICE_PACKAGES = ("edgeml.bundle", "edgeml.runtime", "edgeml.agent")
# Every top-level command is one or the other; a new command must be placed here.
DEVICE_COMMANDS = ("broker", "inspect", "predict", "serve", "verify", "agent")
HOST_COMMANDS = ("dashboard", "devices", "evaluate", "explore", "fleet", "keys", "models", "monitor",
                 "package", "simulate", "train", "flash", "retrain", "deploy", "rollback")

PROBE = """
import json, sys
forbidden = set(sys.argv[1].split(","))
code = None
if sys.argv[2] == "import":
    import importlib
    importlib.import_module(sys.argv[3])
else:
    import edgeml.cli
    try:
        edgeml.cli.main(sys.argv[3:])
    except SystemExit as exc:
        code = exc.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
print("RESULT " + json.dumps({"code": code, "loaded": loaded}))
"""


def _probe(mode: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", PROBE, ",".join(FORBIDDEN), mode, *args],
                          capture_output=True, text=True, timeout=120)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, f"{mode} {args}: {proc.stdout}{proc.stderr}"
    return dict(json.loads(line.removeprefix("RESULT ")))


def device_modules() -> list[str]:
    out: list[str] = []
    for name in DEVICE_PACKAGES:
        if importlib.util.find_spec(name) is None:
            continue
        pkg = importlib.import_module(name)
        out.append(name)
        out += sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=name + "."))
    return out


MODULES = device_modules()


@pytest.fixture(scope="module")
def imported() -> dict[str, dict[str, Any]]:
    """Each module imported in its own fresh interpreter, a few at a time."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(MODULES, pool.map(lambda m: _probe("import", m), MODULES), strict=True))


def test_the_device_packages_are_walked() -> None:
    for expected in ("edgeml.bundle.verify", "edgeml.runtime.predictor", "edgeml.runtime.http",
                     "edgeml.runtime.telemetry", "edgeml.runtime.service"):
        assert expected in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_device_module_imports_no_host_library(module: str, imported: dict[str, Any]) -> None:
    assert imported[module]["loaded"] == [], f"importing {module} loads a host library"


def test_public_api_imports_no_host_library() -> None:
    """What README tells device users to write; the lazy exports keep paho-mqtt and the HTTP
    server out of a Predictor-only program, and `import edgeml.runtime` alone loads nothing."""
    forbidden = {*FORBIDDEN, "paho"}
    code = ("import sys; from edgeml.runtime import Predictor; from edgeml.bundle import "
            "verify_bundle; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{forbidden!r} or m == 'edgeml.runtime.http'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert proc.stdout.strip() == "[]"
    code = "import sys, edgeml.runtime; print(sorted(m for m in sys.modules if 'numpy' in m))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert proc.stdout.strip() == "[]"


def test_every_command_is_classified_device_or_host() -> None:
    for name in cli.commands:
        assert name in DEVICE_COMMANDS or name in HOST_COMMANDS, (
            f"`edgeml {name}` is new: add it to DEVICE_COMMANDS or HOST_COMMANDS")


def _device_commands() -> list[list[str]]:
    """[name] or [group, sub] for every device command and subcommand."""
    import click

    out: list[list[str]] = []
    for name in DEVICE_COMMANDS:
        cmd = cli.commands.get(name)
        if cmd is None:
            continue
        out.append([name])
        if isinstance(cmd, click.Group):
            out += [[name, sub] for sub in sorted(cmd.commands)]
    return out


@pytest.mark.parametrize("command", _device_commands(), ids=" ".join)
def test_device_command_help_loads_no_host_library(command: list[str]) -> None:
    result = _probe("cli", *command, "--help")
    assert result["code"] == 0
    assert result["loaded"] == []


def test_verify_loads_no_host_library(signed_tiny_bundle: tuple[Path, Path]) -> None:
    bundle, public = signed_tiny_bundle
    result = _probe("cli", "verify", str(bundle), "--public-key", str(public))
    assert result["code"] == 0
    assert result["loaded"] == []


def test_inspect_loads_no_host_library(tiny_bundle_path: Path) -> None:
    result = _probe("cli", "inspect", str(tiny_bundle_path), "--json")
    assert result["code"] == 0
    assert result["loaded"] == []


def test_predict_loads_no_host_library(tiny_bundle_path: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"temp": 20.0, "load": 0.5, "mode": "eco"}\n')
    result = _probe("cli", "predict", str(tiny_bundle_path), "--input", str(rows), "--json")
    assert result["code"] == 0
    assert result["loaded"] == []
