"""The systemd unit that runs ``edgeml agent`` (device-safe: standard library only).

Used by ``edgeml flash`` (on the host, into an SD card or image folder) and by ``edgeml agent
install-service`` (on the device), so both write the same text::

    [Service]
    User=edgeml                      its own user (or DynamicUser=yes with user None)
    ExecStart=/opt/edgeml/venv/bin/edgeml agent --config /etc/edgeml/agent.yaml
    Restart=always
    StateDirectory=edgeml            /var/lib/edgeml, given to the agent as $STATE_DIRECTORY
    ProtectSystem=strict             the state folder is the only place it may write

:func:`install_service` writes the unit atomically and, when asked, enables it with
``systemctl daemon-reload`` and ``systemctl enable --now`` (only where systemctl exists).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgeml._files import atomic_write
from edgeml.errors import EdgeMLError, UsageError

__all__ = ["DEFAULT_CONFIG", "DEFAULT_STATE_DIR", "DEFAULT_USER", "UNIT_NAME", "ServiceResult",
           "install_service", "state_directory", "unit_text"]

UNIT_NAME = "edgeml-agent.service"
DEFAULT_CONFIG = "/etc/edgeml/agent.yaml"
DEFAULT_STATE_DIR = "/var/lib/edgeml"
DEFAULT_USER = "edgeml"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def state_directory(state_dir: str) -> str:
    """The ``StateDirectory=`` value for ``state_dir`` (a folder under /var/lib)."""
    p = PurePosixPath(state_dir)
    if not p.is_absolute() or ".." in p.parts:
        raise UsageError(f"state folder {state_dir!r} must be an absolute path under /var/lib")
    try:
        rel = p.relative_to("/var/lib")
    except ValueError:
        raise UsageError(f"state folder {state_dir!r} is not under /var/lib: systemd's "
                         "StateDirectory= is relative to /var/lib") from None
    if not rel.parts:
        raise UsageError("the state folder must be a folder under /var/lib, not /var/lib itself")
    return str(rel)


def _quote(arg: str) -> str:
    """One ExecStart= word (systemd's quoting: double quotes, backslash escapes)."""
    if any(ord(c) < 32 for c in arg):
        raise UsageError(f"{arg!r}: control characters cannot go into a systemd unit")
    if _SAFE.match(arg):
        return arg.replace("%", "%%")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def unit_text(command: Sequence[str], *, config: str = DEFAULT_CONFIG,
              state_dir: str = DEFAULT_STATE_DIR, user: str | None = DEFAULT_USER) -> str:
    """The unit: ``COMMAND agent --config CONFIG`` as ``user`` (None: DynamicUser=yes)."""
    if not command:
        raise UsageError("the unit needs the command that runs edgeml")
    if not PurePosixPath(command[0]).is_absolute():
        raise UsageError(f"ExecStart= needs an absolute program path, not {command[0]!r}")
    if not PurePosixPath(config).is_absolute():
        raise UsageError(f"the config path {config!r} must be absolute (it is read on the device)")
    if user is not None and not _USER.match(user):
        raise UsageError(f"user name {user!r} is not a valid system user name")
    state = state_directory(state_dir)
    exec_start = " ".join(_quote(a) for a in [*command, "agent", "--config", config])
    who = [f"User={user}", f"Group={user}"] if user else ["DynamicUser=yes"]
    lines = [
        "# Written by edgeml (edgeml flash / edgeml agent install-service).",
        "[Unit]",
        "Description=edgeml agent: serves the model, takes over-the-air deploys",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        *who,
        f"ExecStart={exec_start}",
        "Restart=always",
        "RestartSec=5",
        f"StateDirectory={state}",
        "StateDirectoryMode=0700",
        "Environment=PYTHONUNBUFFERED=1",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def default_command() -> list[str]:
    """How this device runs edgeml: the ``edgeml`` script beside this Python, else ``-m``."""
    script = Path(sys.executable).with_name("edgeml")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "edgeml"]


@dataclass(frozen=True)
class ServiceResult:
    unit: Path
    enabled: bool
    message: str  # what happened, for people


def install_service(*, config: str = DEFAULT_CONFIG, unit_dir: str | Path = DEFAULT_UNIT_DIR,
                    user: str | None = DEFAULT_USER, state_dir: str = DEFAULT_STATE_DIR,
                    command: Sequence[str] | None = None, enable: bool = False) -> ServiceResult:
    """Write the unit into ``unit_dir`` (checking the config with the agent's loader)."""
    from edgeml.agent.config import load_config

    cfg = Path(config)
    if not cfg.is_file():
        raise UsageError(f"config {cfg} does not exist: write it first (edgeml flash writes one)")
    settings = load_config(cfg)
    if not settings.get("broker"):
        raise UsageError(f"config {cfg}: no broker (the agent needs broker: mqtt://HOST[:PORT])")
    text = unit_text(command or default_command(), config=str(cfg.absolute()),
                     state_dir=state_dir, user=user)
    folder = Path(unit_dir)
    if not folder.is_dir():
        raise UsageError(f"unit folder {folder} does not exist")
    try:
        unit = atomic_write(folder / UNIT_NAME, text)
    except OSError as exc:
        raise EdgeMLError(f"cannot write {folder / UNIT_NAME}: {exc}") from exc
    if not enable:
        return ServiceResult(unit, False, f"wrote {unit}; enable it with "
                                          f"`systemctl daemon-reload && systemctl enable --now "
                                          f"{UNIT_NAME}`")
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return ServiceResult(unit, False, f"wrote {unit} only: systemctl is not on this system, "
                                          "nothing was enabled")
    if not Path("/run/systemd/system").is_dir():
        return ServiceResult(unit, False, f"wrote {unit} only: systemd is not running here, "
                                          "nothing was enabled")
    for argv in ([systemctl, "daemon-reload"], [systemctl, "enable", "--now", UNIT_NAME]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise EdgeMLError(f"wrote {unit}, but `{' '.join(argv[1:])}` failed: {why[0]}")
    return ServiceResult(unit, True, f"wrote {unit}; enabled and started {UNIT_NAME}")
