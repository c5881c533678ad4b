"""The device side loads no host library: importing edgeml.bundle/runtime/cli and running
`edgeml verify` (with a signature check) leaves scikit-learn, skl2onnx, onnx, pandas,
matplotlib, yaml, pydantic and rich out of sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tiny_bundle

from edgeml.package.keys import generate_keypair

FORBIDDEN = ("sklearn", "skl2onnx", "onnx", "onnxmltools", "pandas", "matplotlib", "yaml",
             "pydantic", "rich", "scipy", "pyarrow", "jinja2")

PROBE = """
import json, sys
import edgeml.bundle, edgeml.runtime, edgeml.cli
import edgeml.bundle.verify, edgeml.bundle.inspect
try:
    edgeml.cli.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
forbidden = set(sys.argv[0].split(","))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
print("RESULT " + json.dumps({"code": code, "loaded": loaded}))
"""


def _probe(args: list[str]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.replace("sys.argv[0]", repr(",".join(FORBIDDEN))), *args],
        capture_output=True, text=True, timeout=120,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stdout + proc.stderr
    return dict(json.loads(line.removeprefix("RESULT ")))


def test_verify_loads_no_host_library(tmp_path: Path) -> None:
    _private, public = generate_keypair(tmp_path / "keys")
    bundle = tiny_bundle.make(tmp_path, sign_key=_private)
    result = _probe(["verify", str(bundle), "--public-key", str(public)])
    assert result["code"] == 0
    assert result["loaded"] == []


def test_inspect_loads_no_host_library(tmp_path: Path) -> None:
    bundle = tiny_bundle.make(tmp_path)
    result = _probe(["inspect", str(bundle), "--json"])
    assert result["code"] == 0
    assert result["loaded"] == []
