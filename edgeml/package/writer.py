"""Writing a bundle archive deterministically and atomically.

Same inputs, same bytes: members are sorted, every entry gets the same timestamp (the registry
entry's ``created_at``), permissions (0644), creator system (Unix) and compression (deflate
level 6; wheels, already compressed, are stored). The file is written durably with
:func:`edgeml._files.atomic_open`: a temporary name in the destination folder, fsync, rename,
fsync of the folder.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from edgeml._files import atomic_open
from edgeml.bundle.manifest import MANIFEST, SIGNATURE
from edgeml.errors import PackagingError

__all__ = ["file_hashes", "write_bundle", "zip_date_time"]

_EPOCH_ZIP = (1980, 1, 1, 0, 0, 0)


def zip_date_time(created_at: str) -> tuple[int, int, int, int, int, int]:
    """``"2026-11-28T17:00:00Z"`` -> ``(2026, 11, 28, 17, 0, 0)`` (zip cannot go before 1980)."""
    try:
        dt = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError as exc:
        raise PackagingError(f"created_at {created_at!r} is not an ISO-8601 timestamp") from exc
    stamp = (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second - dt.second % 2)  # DOS: 2 s
    return max(stamp, _EPOCH_ZIP)


def file_hashes(members: Mapping[str, bytes]) -> dict[str, str]:
    """sha256 of every member except the manifest and its signature (``manifest.files``)."""
    return {
        name: hashlib.sha256(data).hexdigest()
        for name, data in sorted(members.items())
        if name not in (MANIFEST, SIGNATURE)
    }


def _entry(name: str, date_time: tuple[int, int, int, int, int, int]) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.create_system = 3  # Unix, so external_attr means mode bits everywhere
    info.external_attr = (0o100644 & 0xFFFF) << 16
    info.compress_type = zipfile.ZIP_STORED if name.endswith(".whl") else zipfile.ZIP_DEFLATED
    return info


def write_bundle(path: Path, members: Mapping[str, bytes], created_at: str) -> Path:
    """Write ``members`` (name -> bytes, ``manifest.json`` included) to ``path`` atomically."""
    if MANIFEST not in members:
        raise PackagingError(f"internal: a bundle needs {MANIFEST}")
    date_time = zip_date_time(created_at)
    with atomic_open(path, mode=0o644) as fh, zipfile.ZipFile(fh, "w") as zf:
        for name in sorted(members):
            zf.writestr(_entry(name, date_time), members[name], compresslevel=6)
    return path
