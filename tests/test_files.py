"""Durable writes (edgeml._files): fsync the file, rename, fsync the folder; failures leave
the old file and no temporary file behind.

The order of fsync and rename is what is under test, so os.fsync/os.replace/os.rename are
spied on (they still run); the failure tests use real files only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edgeml import _files
from edgeml._files import atomic_open, atomic_rename_dir, atomic_write


class Calls:
    """Records ("fsync", path) / ("replace", src, dst) / ("rename", src, dst) in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[tuple[str, ...]] = []
        real_fsync, real_replace, real_rename, real_link = os.fsync, os.replace, os.rename, os.link

        def fsync(fd: int) -> None:
            self.log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src: Any, dst: Any) -> None:
            self.log.append(("replace", str(src), str(dst)))
            real_replace(src, dst)

        def rename(src: Any, dst: Any) -> None:
            self.log.append(("rename", str(src), str(dst)))
            real_rename(src, dst)

        def link(src: Any, dst: Any) -> None:
            self.log.append(("link", str(src), str(dst)))
            real_link(src, dst)

        for name, fn in (("fsync", fsync), ("replace", replace), ("rename", rename), ("link", link)):
            monkeypatch.setattr(_files.os, name, fn)

    def fsynced(self) -> list[str]:
        return [c[1] for c in self.log if c[0] == "fsync"]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_fsyncs_the_file_then_renames_then_fsyncs_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(monkeypatch)
    dest = atomic_write(tmp_path / "sub" / "model.json", '{"a": 1}\n')
    assert dest.read_text() == '{"a": 1}\n' and oct(dest.stat().st_mode & 0o777) == "0o644"
    (fsync_file, tmp_file), (op, src, dst), (fsync_dir, folder) = calls.log
    assert (fsync_file, op, fsync_dir) == ("fsync", "replace", "fsync")
    assert tmp_file == src and Path(src).parent == tmp_path / "sub" and Path(src).name.endswith(".tmp")
    assert dst == str(dest) and folder == str(tmp_path / "sub")
    assert _leftovers(tmp_path / "sub") == []


def test_no_overwrite_links_and_refuses_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(monkeypatch)
    key = atomic_write(tmp_path / "edgeml.key", b"secret", mode=0o600, overwrite=False)
    assert [c[0] for c in calls.log] == ["fsync", "link", "fsync"]
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        atomic_write(key, b"other", overwrite=False)
    assert key.read_bytes() == b"secret" and _leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    dest = atomic_write(tmp_path / "bundle.edgeml", b"old bytes")
    with pytest.raises(RuntimeError, match="disk full"), atomic_open(dest) as fh:
        fh.write(b"half of the new ")
        raise RuntimeError("disk full")
    assert dest.read_bytes() == b"old bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.edgeml"]
    with pytest.raises(TypeError):
        atomic_write(dest, 12345)  # type: ignore[arg-type]
    assert dest.read_bytes() == b"old bytes" and _leftovers(tmp_path) == []


def test_a_folder_appears_atomically_after_everything_in_it_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = tmp_path / "m" / ".tmp-abc"
    (build / "nested").mkdir(parents=True)
    (build / "model.json").write_text("{}")
    (build / "pipeline.joblib").write_bytes(b"x" * 100)
    (build / "nested" / "f").write_text("y")
    calls = Calls(monkeypatch)
    atomic_rename_dir(build, tmp_path / "m" / "1")
    ops = [c[0] for c in calls.log]
    rename_at = ops.index("rename")
    before = set(calls.fsynced()[:rename_at])
    assert before == {str(build / "model.json"), str(build / "pipeline.joblib"),
                      str(build / "nested" / "f"), str(build / "nested"), str(build)}
    assert calls.log[rename_at] == ("rename", str(build), str(tmp_path / "m" / "1"))
    assert calls.log[rename_at + 1:] == [("fsync", str(tmp_path / "m"))]
    assert (tmp_path / "m" / "1" / "nested" / "f").read_text() == "y"


def test_registry_versions_and_bundles_go_through_the_durable_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry renames a fully fsynced version folder; write_bundle fsyncs and renames."""
    from test_registry import _writer

    from edgeml.package.writer import write_bundle
    from edgeml.train.registry import Registry

    calls = Calls(monkeypatch)
    entry = Registry(tmp_path / "reg").register("m", _writer("m"))
    renames = [c for c in calls.log if c[0] == "rename"]
    assert len(renames) == 1 and renames[0][2] == str(entry.path)
    tmp_folder = renames[0][1]
    for name in ("model.json", "holdout.parquet", "pipeline.joblib"):
        assert f"{tmp_folder}/{name}" in calls.fsynced()[: calls.log.index(renames[0])]
    assert calls.log[calls.log.index(renames[0]) + 1] == ("fsync", str(tmp_path / "reg" / "m"))

    calls.log.clear()
    path = write_bundle(tmp_path / "out" / "m-1-x.edgeml", {"manifest.json": b"{}"},
                        "2026-11-28T17:00:00Z")
    assert [c[0] for c in calls.log] == ["fsync", "replace", "fsync"]
    assert calls.log[1][2] == str(path) and calls.log[2][1] == str(tmp_path / "out")
