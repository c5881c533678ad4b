"""Checking a bundle's ed25519 signature (device-safe).

``cryptography`` is imported only when a check is asked for, so devices that do not verify
signatures do not need it (``pip install edgeml[sign]`` adds it).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from edgeml.bundle.manifest import SIGNATURE
from edgeml.errors import NotFoundError, SignatureError, UsageError

__all__ = ["check_signature"]


def check_signature(manifest_bytes: bytes, signature: bytes | None, public_key: Path | str) -> None:
    """Raise :class:`SignatureError` unless ``signature`` (``manifest.sig``) signs ``manifest_bytes``."""
    key_path = Path(public_key)
    if not key_path.is_file():
        raise NotFoundError(f"public key not found: {key_path}")
    if signature is None:
        raise SignatureError(f"bundle is not signed (no {SIGNATURE}) but a public key was given")
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{SIGNATURE}: not valid base64") from exc
    if len(raw) != 64:
        raise SignatureError(f"{SIGNATURE}: malformed (an ed25519 signature is 64 bytes, got {len(raw)})")
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError as exc:  # pragma: no cover - depends on the device
        raise UsageError(
            "checking signatures needs the 'cryptography' package (pip install 'edgeml[sign]')"
        ) from exc
    try:
        key = serialization.load_pem_public_key(key_path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{key_path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{key_path}: not an ed25519 public key")
    try:
        key.verify(raw, manifest_bytes)
    except InvalidSignature as exc:
        raise SignatureError(
            f"{SIGNATURE}: signature does not match manifest.json for public key {key_path.name} "
            "(manifest edited, or signed with another key)"
        ) from exc
