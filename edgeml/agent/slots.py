"""The agent's state folder: two slots, the ``current`` pointer, the deploy record, the spools.

Layout (``--state-dir``, ``$STATE_DIRECTORY`` under systemd)::

    agent.lock               one agent per folder (flock)
    current                  {"slot": "a", "previous": "b"}: replaced by atomic rename + fsync
    slots/a/bundle.edgeml    a slot's bundle
    slots/a/slot.json        {"status": "good" | "pending" | "bad", "name", "version", "sha256"}
    slots/b/download.*       a partial download into the inactive slot (edgeml.agent.transfer)
    deploy.json              the deploy state machine's record (edgeml.agent.machine)
    outbox/                  the spool of deploy reports
    spool/                   the telemetry spool (edgeml.runtime.spool)

The slot being written is never the one ``current`` names; it is marked bad (emptied)
before it is written (RAUC). The previous slot keeps its bundle for rollback until the next
deployment needs the room. Device-safe: standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeml._files import atomic_write, fsync_dir
from edgeml.errors import EdgeMLError

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["BUNDLE", "SLOTS", "SlotInfo", "StateDir"]

SLOTS = ("a", "b")
BUNDLE = "bundle.edgeml"
SLOT_INFO = "slot.json"


@dataclass(frozen=True)
class SlotInfo:
    slot: str
    status: str  # good | pending | bad | empty
    name: str | None = None
    version: int | None = None
    sha256: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "status": self.status, "name": self.name,
                "version": self.version, "sha256": self.sha256, "reason": self.reason}


class StateDir:
    """The state folder of one agent. ``open()`` locks it and creates the layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.record_path = self.root / "deploy.json"
        self.outbox = self.root / "outbox"
        self.spool = self.root / "spool"
        self._lock_fd = -1

    def open(self) -> StateDir:
        try:
            for slot in SLOTS:
                (self.root / "slots" / slot).mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(self.root / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise EdgeMLError(f"cannot use state folder {self.root}: {exc}") from exc
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(self._lock_fd)
                self._lock_fd = -1
                raise EdgeMLError(f"state folder {self.root} is in use by another agent") from exc
        return self

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- slots ------------------------------------------------------------------------

    def slot_dir(self, slot: str) -> Path:
        return self.root / "slots" / slot

    def bundle_path(self, slot: str) -> Path:
        return self.slot_dir(slot) / BUNDLE

    def slot_info(self, slot: str) -> SlotInfo:
        path = self.slot_dir(slot) / SLOT_INFO
        if not self.bundle_path(slot).is_file():
            return SlotInfo(slot, "empty")
        try:
            raw = json.loads(path.read_bytes())
            return SlotInfo(slot, str(raw["status"]), raw.get("name"), raw.get("version"),
                            raw.get("sha256"), raw.get("reason"))
        except (OSError, ValueError, KeyError, TypeError):
            return SlotInfo(slot, "bad", reason="no readable slot.json")

    def mark(self, info: SlotInfo) -> None:
        atomic_write(self.slot_dir(info.slot) / SLOT_INFO,
                     json.dumps(info.to_dict(), sort_keys=True) + "\n")

    def empty(self, slot: str, reason: str) -> None:
        """Mark ``slot`` bad and remove its bundle (before it is written, or after a failure)."""
        folder = self.slot_dir(slot)
        self.mark(SlotInfo(slot, "bad", reason=reason))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / BUNDLE)
        fsync_dir(folder)

    def install_file(self, slot: str, src: Path, info: SlotInfo) -> Path:
        """Rename a complete, fsynced file into ``slot`` and record it as ``info``."""
        dest = self.bundle_path(slot)
        os.replace(src, dest)
        fsync_dir(dest.parent)
        self.mark(info)
        return dest

    # -- the current pointer ------------------------------------------------------------

    def current(self) -> tuple[str | None, str | None]:
        """(current slot, previous slot); (None, None) before the first bundle."""
        path = self.root / "current"
        if not path.is_file():
            return None, None
        try:
            raw = json.loads(path.read_bytes())
            slot, previous = raw["slot"], raw.get("previous")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgeMLError(f"{path}: unreadable ({exc})") from exc
        if slot not in SLOTS:
            raise EdgeMLError(f"{path}: unknown slot {slot!r}")
        return slot, previous if previous in SLOTS else None

    def point(self, slot: str, previous: str | None) -> None:
        """Switch ``current`` to ``slot``: temp file, fsync, rename, fsync the folder."""
        atomic_write(self.root / "current",
                     json.dumps({"slot": slot, "previous": previous}) + "\n")

    @staticmethod
    def other(slot: str | None) -> str:
        return "b" if slot == "a" else "a"
