"""``edgeml flash``: lay out an installable edgeml agent in a folder (an SD card root or image).

The folder mirrors the device's root file system, so a mounted SD card root works as is::

    etc/edgeml/agent.yaml                   the agent config (given and checked, or generated)
    var/lib/edgeml/                         the state folder: the bundle as committed slot a
    etc/systemd/system/edgeml-agent.service the unit (edgeml.agent.unit)
    opt/edgeml/wheels/*.whl                 with --wheels: the bundle's offline wheels
    opt/edgeml/install.sh                   with --wheels: installs them with no network
    opt/edgeml/flash.json                   what was flashed

The state folder is built by the agent's own code (:class:`~edgeml.agent.slots.StateDir`
and :func:`~edgeml.agent.install.seed_state`, as ``edgeml agent --bundle`` does on first
boot), under a temporary name, and renamed into place; every file is written atomically.
A non-empty target is refused unless ``force``; then edgeml's files are replaced and the
rest is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgeml._files import atomic_rename_dir, atomic_write
from edgeml.agent.config import load_config
from edgeml.agent.install import file_sha256, seed_state
from edgeml.agent.slots import StateDir
from edgeml.agent.unit import DEFAULT_CONFIG, DEFAULT_STATE_DIR, DEFAULT_USER, UNIT_NAME, unit_text
from edgeml.bundle.reader import open_bundle
from edgeml.errors import EdgeMLError, NotFoundError, UsageError

__all__ = ["DEFAULT_PREFIX", "FlashResult", "flash", "install_script"]

DEFAULT_PREFIX = "/opt/edgeml"  # install.sh, wheels/, and the venv (venv/) on the device
PURE_PYTHON = ("paho-mqtt", "click")  # what a distro target gets from pip (edgeml.package.wheels)


@dataclass(frozen=True)
class FlashResult:
    root: Path
    config: Path  # these paths are inside root
    state_dir: Path
    unit: Path
    bundle: str  # name@version
    sha256: str
    generated_config: bool
    install_script: Path | None = None
    wheels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "config": str(self.config),
                "state_dir": str(self.state_dir), "unit": str(self.unit), "bundle": self.bundle,
                "sha256": self.sha256, "generated_config": self.generated_config,
                "install_script": str(self.install_script) if self.install_script else None,
                "wheels": self.wheels}


def _inside(root: Path, device_path: str) -> Path:
    return root / PurePosixPath(device_path).relative_to("/")


def _default_config(state_dir: str, broker: str) -> str:
    return (
        "# edgeml agent configuration, written by `edgeml flash` (keys: `edgeml agent --help`)\n"
        f"state_dir: {state_dir}\n"
        "mqtt:\n"
        f"  broker: {broker}\n"
        "http:\n"
        "  host: 127.0.0.1     # loopback only; 0.0.0.0 serves the network\n"
        "  port: 8080\n"
    )


def _check_config(path: Path, state_dir: str) -> str:
    """The given config's text, after the agent's own loader accepted it."""
    settings = load_config(path)
    if not settings.get("broker"):
        raise UsageError(f"config {path}: no broker (the agent needs broker: mqtt://HOST[:PORT])")
    given = settings.get("state_dir")
    if given is not None and str(given) != state_dir:
        raise UsageError(f"config {path}: state_dir {given} differs from --state-dir {state_dir}")
    if settings.get("bundle"):
        raise UsageError(f"config {path}: 'bundle' is set, but edgeml flash installs the bundle; "
                         "remove the key")
    return path.read_text(encoding="utf-8")


def _check_target(root: Path, force: bool) -> None:
    if root.exists() and not root.is_dir():
        raise UsageError(f"--to {root}: not a folder")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise UsageError(f"--to {root} is not empty: give --force to write edgeml's files into "
                         "it (they are replaced; nothing else is touched)")


@contextlib.contextmanager
def _built_aside(dest: Path) -> Iterator[Path]:
    """Yield an empty sibling folder to fill; on success it replaces ``dest`` by a rename
    (fsynced), so ``dest`` is never half-written; on failure it is removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.flash-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        if dest.exists():
            os.rename(dest, old)
        atomic_rename_dir(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_state(dest: Path, bundle: Path) -> None:
    """The state folder with ``bundle`` committed in slot a, built aside then renamed in."""
    with _built_aside(dest) as tmp:
        state = StateDir(tmp).open()
        try:
            seed_state(state, bundle)
        finally:
            state.close()
        (tmp / "agent.lock").unlink()


def _write_wheels(dest: Path, bundle: Path) -> list[str]:
    with zipfile.ZipFile(bundle) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("wheels/") and n.endswith(".whl"))
        if not names:
            raise UsageError(f"{bundle} carries no offline wheels: package it with "
                             "`edgeml package MODEL --target T --offline`, or drop --wheels")
        with _built_aside(dest) as tmp:
            tmp.mkdir(parents=True)
            for name in names:
                with zf.open(name) as src, open(tmp / PurePosixPath(name).name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    return [PurePosixPath(n).name for n in names]


def flash(bundle: str | Path, to: str | Path, *, config: str | Path | None = None,
          broker: str | None = None, wheels: bool = False,
          state_dir: str = DEFAULT_STATE_DIR, user: str | None = DEFAULT_USER,
          prefix: str = DEFAULT_PREFIX, force: bool = False) -> FlashResult:
    """Lay out ``bundle`` as an installable agent under ``to`` (see the module docstring)."""
    bundle = Path(bundle)
    root = Path(to)
    if not bundle.is_file():
        raise NotFoundError(f"bundle {bundle} not found")
    manifest = open_bundle(bundle).manifest
    if not PurePosixPath(prefix).is_absolute():
        raise UsageError(f"--prefix {prefix!r} must be an absolute path on the device")
    command = [f"{prefix}/venv/bin/edgeml"]
    unit = unit_text(command, config=DEFAULT_CONFIG, state_dir=state_dir, user=user)  # checks
    if config is not None:
        if broker is not None:
            raise UsageError("give --config FILE or --broker URL, not both (the file sets it)")
        if not Path(config).is_file():
            raise NotFoundError(f"config {config} not found")
        text = _check_config(Path(config), state_dir)
    elif broker is None:
        raise UsageError("the agent needs a broker: give --config FILE or --broker URL")
    else:
        text = _default_config(state_dir, broker)
    _check_target(root, force)
    method = str(manifest.install.get("method") or "pypi")

    try:
        root.mkdir(parents=True, exist_ok=True)
        found: list[str] = []
        script = None
        if wheels:
            found = _write_wheels(_inside(root, prefix) / "wheels", bundle)
            script = atomic_write(_inside(root, prefix) / "install.sh",
                                  install_script(prefix=prefix, state_dir=state_dir, user=user,
                                                 method=method), mode=0o755)
        state = _inside(root, state_dir)
        _write_state(state, bundle)
        cfg = atomic_write(_inside(root, DEFAULT_CONFIG), text)
        if config is None:  # what we generated must load with the agent's own loader
            load_config(cfg)
        unit_path = atomic_write(_inside(root, "/etc/systemd/system") / UNIT_NAME, unit)
    except OSError as exc:
        raise EdgeMLError(f"cannot write into {root}: {exc}") from exc
    slot = StateDir(state)
    result = FlashResult(root=root, config=cfg, state_dir=state, unit=unit_path,
                         bundle=manifest.ref, sha256=file_sha256(slot.bundle_path("a")),
                         generated_config=config is None, install_script=script, wheels=found)
    with contextlib.suppress(OSError):
        atomic_write(_inside(root, prefix) / "flash.json",
                     json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    return result


def install_script(*, prefix: str = DEFAULT_PREFIX, state_dir: str = DEFAULT_STATE_DIR,
                   user: str | None = DEFAULT_USER, method: str = "pypi") -> str:
    """``install.sh``: a venv, the wheels beside it with no network, then the service."""
    if method == "distro":  # onnxruntime and numpy come from the distribution (apt)
        venv_flags, packages = "--system-site-packages", f"--no-deps edgeml {' '.join(PURE_PYTHON)}"
    else:
        venv_flags, packages = "", "edgeml"
    depth = len(PurePosixPath(prefix).parts) - 1  # from <root>/<prefix> back to <root>
    up = "/".join([".."] * depth)
    return _INSTALL_SH.format(prefix=prefix, state_dir=state_dir, user=user or "",
                              config=DEFAULT_CONFIG, unit=UNIT_NAME, venv_flags=venv_flags,
                              packages=packages, up=up)


_INSTALL_SH = r"""#!/bin/sh
# Install the edgeml agent from this folder with no network (written by `edgeml flash`).
#
#   sudo sh install.sh                 venv in {prefix}/venv, wheels, user, unit, enable
#   sh install.sh --no-service         only the venv and the wheels (no root needed
#                                      with --prefix): no user, no systemd
#   sh install.sh --prefix DIR --python PY
#
# pip runs as: pip install --no-index --find-links <this folder>/wheels {packages}
# (the venv's pip; else a pip-*.whl put in wheels/; else the system's python3 -m pip).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/{up}" && pwd)
DEFAULT_PREFIX={prefix}
PREFIX=$DEFAULT_PREFIX
PYTHON=python3
SERVICE=1
AGENT_USER={user}
STATE_DIR={state_dir}
CONFIG={config}
UNIT={unit}

say() {{ echo "install.sh: $*"; }}
die() {{ echo "install.sh: error: $*" >&2; exit 1; }}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a folder"; PREFIX=$2; shift 2 ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON=$2; shift 2 ;;
    --no-service) SERVICE=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
VENV=$PREFIX/venv
[ -d "$HERE/wheels" ] || die "no wheels folder in $HERE (flash with --wheels)"

# 1. a virtual environment (without pip when the system has no ensurepip)
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv {venv_flags} "$VENV" 2>/dev/null \
    || "$PYTHON" -m venv --without-pip {venv_flags} "$VENV" \
    || die "cannot create a venv with $PYTHON (apt install python3-venv)"
fi
PY=$VENV/bin/python

# 2. pip, never the network
PIPWHL=
for w in "$HERE"/wheels/pip-*.whl; do [ -f "$w" ] && PIPWHL=$w; done
if "$PY" -m pip --version >/dev/null 2>&1; then PIPMODE=venv
elif [ -n "$PIPWHL" ]; then PIPMODE=wheel
elif "$PYTHON" -m pip --version >/dev/null 2>&1; then PIPMODE=system
else die "no pip: apt install python3-pip, or put a pip-*.whl into $HERE/wheels"; fi
pip_() {{
  case $PIPMODE in
    venv) "$PY" -m pip "$@" ;;
    wheel) "$PY" "$PIPWHL/pip" "$@" ;;
    system) "$PYTHON" -m pip --python "$PY" "$@" ;;
  esac
}}
say "installing from $HERE/wheels (pip: $PIPMODE)"
pip_ install --disable-pip-version-check --no-input --no-index \
  --find-links "$HERE/wheels" {packages}
"$VENV/bin/edgeml" --version >/dev/null || die "edgeml does not run from $VENV"
say "edgeml installed: $VENV/bin/edgeml"
[ "$SERVICE" = 1 ] || {{ say "--no-service: no user, no unit"; exit 0; }}

# 3. the user, the config, the state folder and the unit
[ "$(id -u)" = 0 ] || die "run as root to install the service (or give --no-service)"
[ -f "$ROOT/etc/systemd/system/$UNIT" ] \
  || die "no $ROOT/etc/systemd/system/$UNIT: run install.sh from the flashed tree ({prefix})"
if [ -n "$AGENT_USER" ] && ! id -u "$AGENT_USER" >/dev/null 2>&1; then
  say "creating the system user $AGENT_USER"
  useradd --system --no-create-home --home-dir "$STATE_DIR" --shell /usr/sbin/nologin \
    "$AGENT_USER" 2>/dev/null || adduser --system --no-create-home --group "$AGENT_USER" \
    || die "cannot create the user $AGENT_USER"
fi
if [ "$ROOT" != / ]; then  # flashed into a folder, not onto this root: copy into place
  mkdir -p "$(dirname "$CONFIG")" /etc/systemd/system
  [ -f "$CONFIG" ] || cp "$ROOT$CONFIG" "$CONFIG"
  if [ ! -f "$STATE_DIR/current" ]; then mkdir -p "$STATE_DIR"; cp -a "$ROOT$STATE_DIR/." "$STATE_DIR/"; fi
fi
sed "s#$DEFAULT_PREFIX/venv/bin/edgeml#$VENV/bin/edgeml#" "$ROOT/etc/systemd/system/$UNIT" \
  > "/etc/systemd/system/.$UNIT.tmp"
mv "/etc/systemd/system/.$UNIT.tmp" "/etc/systemd/system/$UNIT"
[ -z "$AGENT_USER" ] || chown -R "$AGENT_USER:" "$STATE_DIR"
chmod 0700 "$STATE_DIR"
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now "$UNIT"
  say "enabled and started $UNIT"
else  # an image being prepared, a chroot: what `systemctl enable` would link
  mkdir -p /etc/systemd/system/multi-user.target.wants
  ln -sf "../$UNIT" "/etc/systemd/system/multi-user.target.wants/$UNIT"
  say "systemd is not running here: installed and enabled $UNIT, it starts on the next boot"
fi
"""
