"""``--offline``: the wheels a target needs to install the edgeml runtime without a network.

PyPI targets get onnxruntime (the profile's version), numpy, paho-mqtt, click and their
dependencies, downloaded for the profile's platform tags and Python version
(``pip download --only-binary=:all: --platform ... --python-version ... --implementation cp``),
plus an edgeml wheel built from this checkout (``pip wheel --no-deps``, with
``SOURCE_DATE_EPOCH`` set from the registry entry so it is reproducible). Distro targets
(armv7: Debian's python3-onnxruntime and python3-numpy) get only the pure-Python wheels and
edgeml; the manifest's ``install`` block names the Debian packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from edgeml import __version__
from edgeml.errors import PackagingError
from edgeml.package.profiles import DeviceProfile

__all__ = ["RUNTIME_REQUIREMENTS", "download_wheels", "install_notes"]

RUNTIME_REQUIREMENTS = ("numpy", "paho-mqtt", "click")
PURE_PYTHON = ("paho-mqtt", "click")
CHECKOUT = Path(__file__).resolve().parents[2]


def requirements(profile: DeviceProfile) -> list[str]:
    if profile.runtime.method == "distro":
        return list(PURE_PYTHON)
    return [f"onnxruntime=={profile.onnxruntime}", *RUNTIME_REQUIREMENTS]


def install_notes(profile: DeviceProfile, *, offline: bool) -> dict[str, Any]:
    """The manifest's ``install`` block: how this target gets the runtime."""
    src = "--no-index --find-links wheels" if offline else ""
    notes: dict[str, Any] = {"method": profile.runtime.method, "python": profile.python,
                             "offline_wheels": offline}
    if profile.runtime.method == "distro":
        pkgs = " ".join(profile.runtime.distro_packages)
        notes["distro_packages"] = list(profile.runtime.distro_packages)
        notes["pip_requirements"] = requirements(profile)
        notes["commands"] = [
            f"sudo apt install {pkgs}",
            "python3 -m venv --system-site-packages ~/edgeml",
            f"~/edgeml/bin/pip install {src} --no-deps edgeml {' '.join(PURE_PYTHON)}".replace("  ", " "),
        ]
    else:
        notes["platform_tags"] = list(profile.runtime.platform_tags)
        notes["pip_requirements"] = requirements(profile)
        pin = "" if offline else f" onnxruntime=={profile.onnxruntime}"
        notes["commands"] = [
            "python3 -m venv ~/edgeml",
            f"~/edgeml/bin/pip install {src} edgeml{pin}".replace("  ", " "),
        ]
    if offline:
        notes["commands"].insert(0, "unzip -o BUNDLE 'wheels/*'")
    return notes


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PackagingError(f"{what}: timed out") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no output"]
        raise PackagingError(f"{what} failed: {lines[-1]}")


def _pip() -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def download_wheels(profile: DeviceProfile, *, created_at: str) -> dict[str, bytes]:
    """``{"wheels/<file>.whl": bytes}`` for ``profile``; needs the network and a source checkout."""
    if not (CHECKOUT / "pyproject.toml").is_file():
        raise PackagingError(
            "--offline builds an edgeml wheel from the source checkout, and edgeml is not running "
            "from one; package from a checkout or drop --offline"
        )
    ver = profile.python.replace(".", "")
    with tempfile.TemporaryDirectory(prefix="edgeml-wheels-") as tmp:
        dest = Path(tmp)
        cmd = [*_pip(), "download", "--only-binary=:all:", "--dest", str(dest),
               "--python-version", profile.python, "--implementation", "cp",
               "--abi", f"cp{ver}", "--abi", "abi3", "--abi", "none"]
        if profile.runtime.method == "distro":
            cmd += ["--platform", f"linux_{profile.arch}", "--platform", "any", "--no-deps"]
        else:
            for tag in profile.runtime.platform_tags:
                cmd += ["--platform", tag]
        _run([*cmd, *requirements(profile)], f"pip download for {profile.name}")
        epoch = int(datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(max(epoch, 315532800))}
        _run([*_pip(), "wheel", "--no-deps", "--wheel-dir", str(dest), str(CHECKOUT)],
             f"building the edgeml {__version__} wheel", env=env)
        wheels = sorted(dest.glob("*.whl"))
        if not any(w.name.startswith("edgeml-") for w in wheels):
            raise PackagingError("pip wheel produced no edgeml wheel")
        return {f"wheels/{w.name}": w.read_bytes() for w in wheels}
