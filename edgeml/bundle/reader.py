"""Opening a bundle file and reading its members (device-safe: standard library only)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from edgeml.bundle.manifest import MANIFEST, SIGNATURE, Manifest
from edgeml.errors import BundleError, NotFoundError

__all__ = ["Bundle", "open_bundle"]


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: its parsed manifest and lazy access to its members."""

    path: Path
    manifest: Manifest
    manifest_bytes: bytes = field(repr=False)
    _names: tuple[str, ...] = field(repr=False, default=())

    def members(self) -> list[str]:
        """Archive member names, sorted (manifest and signature included)."""
        return sorted(self._names)

    def has(self, member: str) -> bool:
        return member in self._names

    def read(self, member: str) -> bytes:
        if member not in self._names:
            raise BundleError(f"{self.path.name}: has no member {member!r}")
        try:
            with zipfile.ZipFile(self.path) as zf:
                return zf.read(member)
        except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
            raise BundleError(f"{self.path.name}: cannot read {member}: {exc}") from exc

    def signature(self) -> bytes | None:
        """The detached signature over ``manifest.json``, if the bundle is signed."""
        return self.read(SIGNATURE) if self.has(SIGNATURE) else None


def open_bundle(path: str | Path) -> Bundle:
    """Open ``path`` and parse its manifest. Raises NotFoundError or BundleError."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"bundle not found: {p}")
    try:
        with zipfile.ZipFile(p) as zf:
            names = tuple(zf.namelist())
            for name in names:
                if name.startswith("/") or ".." in Path(name).parts:
                    raise BundleError(f"{p.name}: unsafe member name {name!r}")
            if MANIFEST not in names:
                raise BundleError(f"{p.name}: not an edgeml bundle (no {MANIFEST})")
            raw = zf.read(MANIFEST)
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{p.name}: not an edgeml bundle (not a zip archive)") from exc
    except OSError as exc:
        raise BundleError(f"{p.name}: cannot read: {exc}") from exc
    return Bundle(path=p, manifest=Manifest.from_json(raw), manifest_bytes=raw, _names=names)
