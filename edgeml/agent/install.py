"""Checking a downloaded bundle before it may be switched to (device-safe).

In order, each failure is an :class:`InstallRefused` whose message is the reason reported::

    sha256        the whole file matches the command's sha256 (and size)
    signature     with a public key: the signature is valid; an unsigned bundle is refused
                  unless --allow-unsigned; without a key only --allow-unsigned accepts it
    target/arch   the manifest's target.arch is the device's architecture and, when the
                  agent has a --target, target.name is that device profile
    downgrade     a lower version of the model being served, unless the command allows it
    bundle        every member's sha256, the model loads, inputs/outputs match, and the
                  manifest's self-test passes with this device's onnxruntime (verify_bundle)
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeml.bundle.manifest import SIGNATURE, Manifest
from edgeml.bundle.reader import open_bundle
from edgeml.bundle.verify import verify_bundle
from edgeml.errors import EdgeMLError

if TYPE_CHECKING:
    from edgeml.agent.slots import StateDir

__all__ = ["InstallPolicy", "InstallRefused", "check_compat", "device_arch", "normalize_arch",
           "seed_state", "verify_download"]

_ARCH = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64",
         "armv7l": "armv7", "armhf": "armv7", "armv6l": "armv6"}


class InstallRefused(EdgeMLError):
    """A bundle that must not be installed; the message is the reason."""


def normalize_arch(arch: str) -> str:
    a = arch.strip().lower()
    return _ARCH.get(a, a)


def device_arch() -> str:
    return normalize_arch(platform.machine() or "unknown")


@dataclass(frozen=True)
class InstallPolicy:
    """What this device accepts."""

    arch: str
    target: str | None = None  # the device profile name; None: any profile of this arch
    public_key: Path | None = None
    allow_unsigned: bool = False


def check_compat(policy: InstallPolicy, name: str | None, version: int | None,
                 target: str | None, arch: str | None, serving: Manifest | None,
                 allow_downgrade: bool) -> None:
    """Target, architecture and downgrade (from a manifest, or a command's hints)."""
    if arch is not None and normalize_arch(arch) != normalize_arch(policy.arch):
        raise InstallRefused(f"wrong architecture: the bundle is for {arch}, "
                             f"this device is {policy.arch}")
    if target is not None and policy.target is not None and target != policy.target:
        raise InstallRefused(f"wrong target: the bundle is for {target}, "
                             f"this device is {policy.target}")
    if (version is not None and serving is not None and name == serving.name
            and version < serving.version and not allow_downgrade):
        raise InstallRefused(f"downgrade refused: {name}@{version} is older than "
                             f"{serving.ref} (the deployment does not allow downgrades)")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_download(path: Path, sha256: str, policy: InstallPolicy, serving: Manifest | None,
                    allow_downgrade: bool) -> Manifest:
    """Every check of the module docstring; returns the bundle's manifest."""
    got = file_sha256(path)
    if got != sha256:
        raise InstallRefused(f"sha256 mismatch: the file is {got[:12]}…, "
                             f"the deployment says {sha256[:12]}…")
    try:
        bundle = open_bundle(path)
    except EdgeMLError as exc:
        raise InstallRefused(f"not a bundle: {exc}") from exc
    m = bundle.manifest
    signed = bundle.has(SIGNATURE)
    if policy.public_key is None and not policy.allow_unsigned:
        raise InstallRefused("no public key configured: give --public-key (or --allow-unsigned "
                             "to accept bundles nobody signed)")
    if not signed and not policy.allow_unsigned:
        raise InstallRefused("signature: the bundle is not signed (--allow-unsigned accepts it)")
    check_compat(policy, m.name, m.version, m.target.name, m.target.arch, serving,
                 allow_downgrade)
    key = policy.public_key if signed else None
    report = verify_bundle(path, public_key=key, run_selftest=True, raise_on_failure=False)
    bad = report.failed
    if bad is not None:
        raise InstallRefused(f"{bad.name} check failed: {bad.detail}")
    return m


def seed_state(state: StateDir, bundle: Path, public_key: Path | None = None) -> bool:
    """First boot: with no current slot yet, install ``bundle`` as slot a, committed.

    The bundle is verified first (with ``public_key`` when it is signed). Returns False, and
    changes nothing, when the state folder already has a current slot. Used by the agent
    (``--bundle``) and by ``edgeml flash``, so both lay the slot out the same way.
    """
    from edgeml.agent.slots import SlotInfo

    if state.current()[0] is not None:
        return False
    report = verify_bundle(bundle, public_key=public_key if open_bundle(bundle).signature()
                           else None)
    man = report.manifest
    assert man is not None
    tmp = state.slot_dir("a") / "seed.part"
    with open(bundle, "rb") as src, open(tmp, "wb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    state.install_file("a", tmp, SlotInfo("a", "good", man.name, man.version, file_sha256(tmp)))
    state.point("a", None)
    return True
