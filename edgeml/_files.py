"""Durable, atomic file writes: temporary name, fsync, rename, fsync the folder.

On a device that loses power, ``os.replace`` alone is not enough: the rename can reach the
disk before the data does, leaving an empty or truncated file under the final name. Every
durable artefact (bundles, registry entries, keys, reports) is therefore written as

1. a temporary file in the destination folder (``.<name>.<random>.tmp``);
2. ``fsync`` of that file, so its bytes are on disk;
3. ``os.replace`` (or ``os.link`` when overwriting is refused) onto the final name;
4. ``fsync`` of the folder, so the new directory entry is on disk too.

Readers never see a half-written file, and a failure leaves the old file (if any) intact and
no temporary file behind. :func:`fsync_tree` and :func:`atomic_rename_dir` do the same for a
folder built under a temporary name (a registry version).

Standard library only: device-safe.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_open", "atomic_rename_dir", "atomic_write", "fsync_dir", "fsync_tree"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """``fsync`` a folder so that entries created or renamed in it survive a power cut."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # platforms that cannot open folders (Windows): nothing more to do
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], *, mode: int = 0o644, overwrite: bool = True
) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` durably when the block ends without error.

    With ``overwrite=False`` an existing ``path`` is never replaced, even in a race
    (``os.link``), and :class:`FileExistsError` is raised instead.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, dest)
        else:
            os.link(tmp, dest)  # fails if dest exists
            os.unlink(tmp)
        fsync_dir(dest.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int = 0o644,
    overwrite: bool = True,
) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` durably; create parent folders."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_open(path, mode=mode, overwrite=overwrite) as fh:
        fh.write(payload)
    return Path(path)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """``fsync`` every file and folder under ``root`` (deepest first), then ``root`` itself."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(folder, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def atomic_rename_dir(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Make the folder ``src`` (fully written) appear as ``dest`` durably.

    Its contents are fsynced, then it is renamed (``os.rename``: fails if ``dest`` exists and
    is not empty) and the parent folder is fsynced.
    """
    fsync_tree(src)
    os.rename(src, dest)
    fsync_dir(Path(dest).parent)
