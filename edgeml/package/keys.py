"""Ed25519 signing keys for bundles (host side, needs ``cryptography``).

``edgeml keys generate`` writes ``<name>.key`` (PKCS#8 PEM, mode 0600, unencrypted: keep it on
the build machine) and ``<name>.pub`` (SubjectPublicKeyInfo PEM, copy it to devices). A signed
bundle carries ``manifest.sig``: the base64 ed25519 signature over ``manifest.json``'s exact
bytes; since the manifest lists the sha256 of every other member, it covers the whole bundle.
Devices check it with :func:`edgeml.bundle.signature.check_signature`.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeml._files import atomic_write
from edgeml.errors import NotFoundError, UsageError

__all__ = ["generate_keypair", "load_private_key", "sign_manifest"]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` durably, refusing to replace an existing file (even in a race)."""
    try:
        atomic_write(path, data, mode=mode, overwrite=False)
    except FileExistsError as exc:
        raise UsageError(f"{path} already exists; refusing to overwrite a key") from exc


def generate_keypair(out_dir: Path | str, name: str = "edgeml") -> tuple[Path, Path]:
    """Create ``<out_dir>/<name>.key`` (private, 0600) and ``<name>.pub``; return both paths."""
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"invalid key name {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (private_path, public_path):
        if p.exists():
            raise UsageError(f"{p} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink()
        raise
    return private_path, public_path


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"signing key not found: {p}")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{p}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{p}: not an ed25519 private key (edgeml keys generate makes one)")
    return key


def sign_manifest(manifest_bytes: bytes, private_key_path: Path | str) -> bytes:
    """The base64 ed25519 signature over ``manifest_bytes`` (the content of ``manifest.sig``)."""
    key = load_private_key(private_key_path)
    return base64.b64encode(key.sign(manifest_bytes))
