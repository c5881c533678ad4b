"""The deploy state machine: named states, a transition table, a resume table, a retry cap.

One deployment at a time. Its :class:`DeployRecord` is saved durably (``atomic_write``:
temp file, fsync, rename, fsync folder) *before* the step of its new state runs, so a
crash at any point leaves a record naming the step that was under way::

    state          step it runs                                   events
    idle           nothing (serving the committed slot)           deploy, revert
    downloading    pull the chunks into the inactive slot         downloaded, error, cancel
    verifying      sha256, signature, target/arch, downgrade,     verified, error
                   self-test (the device's onnxruntime)
    switching      bundle into the slot, ``current`` pointer,     switched, error
                   swap the served model
    trial          soak: error rate, p95 vs the old version,      passed, failed, rollback
                   self-test again
    committing     mark the slot good                             committed
    rolling_back   pointer back to the old slot, serve it,        rolled_back
                   empty the slot it left
    failing        remove the partial download, report            cleaned

``revert`` is the controller's rollback of the last *committed* deployment (``idle``, its
id in :attr:`DeployRecord.committed`, the previous slot still good and holding its
bundle): the record names that deployment again, ``from_slot`` = the slot it replaced
(the rollback target), ``to_slot`` = the slot it installed (emptied once left), and the
same ``rolling_back`` step runs, so a crash during it finishes on restart like any
rollback.

:data:`RESUME` says where an agent that finds a record on start goes (Mender-style): an
interrupted download resumes from the first missing chunk, a verification runs again,
a switch or a trial that was under way rolls back (before anything is served),
committing / rolling back / failing finish. Each resume counts an attempt; past
:data:`MAX_ATTEMPTS` the deployment fails (rolls back if the pointer may have moved), so
a crash loop ends.

Device-safe: standard library only.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeml._files import atomic_write
from edgeml.errors import EdgeMLError

__all__ = [
    "MAX_ATTEMPTS",
    "RESUME",
    "STATES",
    "TRANSITIONS",
    "DeployRecord",
    "TransitionError",
    "load_record",
    "next_state",
    "resume_state",
    "save_record",
]

IDLE, DOWNLOADING, VERIFYING, SWITCHING = "idle", "downloading", "verifying", "switching"
TRIAL, COMMITTING, ROLLING_BACK, FAILING = "trial", "committing", "rolling_back", "failing"
STATES = (IDLE, DOWNLOADING, VERIFYING, SWITCHING, TRIAL, COMMITTING, ROLLING_BACK, FAILING)
MAX_ATTEMPTS = 3

TRANSITIONS: dict[tuple[str, str], str] = {
    (IDLE, "deploy"): DOWNLOADING,
    (IDLE, "revert"): ROLLING_BACK,  # roll back the last committed deployment
    (DOWNLOADING, "downloaded"): VERIFYING,
    (DOWNLOADING, "error"): FAILING,
    (DOWNLOADING, "cancel"): FAILING,
    (VERIFYING, "verified"): SWITCHING,
    (VERIFYING, "error"): FAILING,
    (SWITCHING, "switched"): TRIAL,
    (SWITCHING, "error"): ROLLING_BACK,
    (TRIAL, "passed"): COMMITTING,
    (TRIAL, "failed"): ROLLING_BACK,
    (TRIAL, "rollback"): ROLLING_BACK,
    (COMMITTING, "committed"): IDLE,
    (ROLLING_BACK, "rolled_back"): IDLE,
    (FAILING, "cleaned"): IDLE,
}

RESUME: dict[str, str] = {
    IDLE: IDLE,
    DOWNLOADING: DOWNLOADING,  # from the first missing chunk
    VERIFYING: VERIFYING,  # idempotent: check again
    SWITCHING: ROLLING_BACK,  # the new version never proved itself
    TRIAL: ROLLING_BACK,  # restarted on trial: roll back before serving
    COMMITTING: COMMITTING,  # idempotent: finish
    ROLLING_BACK: ROLLING_BACK,  # idempotent: finish
    FAILING: FAILING,  # idempotent: finish
}
# where a deployment goes when it used up its attempts
_GIVE_UP = {DOWNLOADING: FAILING, VERIFYING: FAILING, SWITCHING: ROLLING_BACK,
            TRIAL: ROLLING_BACK}


class TransitionError(EdgeMLError):
    """An event that the table does not allow in the current state."""


def next_state(state: str, event: str) -> str:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise TransitionError(f"event {event!r} is not allowed in state {state!r}") from None


def resume_state(record: DeployRecord) -> tuple[str, str | None]:
    """Where a restarted agent continues ``record``, and why (None: it simply resumes)."""
    state = RESUME[record.state]
    if state == ROLLING_BACK and record.state in (SWITCHING, TRIAL):
        return state, f"agent restarted while {record.state.replace('_', ' ')}"
    if record.state in _GIVE_UP and record.attempts >= MAX_ATTEMPTS:
        return _GIVE_UP[record.state], (f"gave up after {record.attempts} restarts in "
                                        f"{record.state}")
    return state, None


@dataclass(frozen=True)
class DeployRecord:
    """The durable state of the one deployment under way (``idle``: none)."""

    state: str = IDLE
    command: dict[str, Any] | None = None  # the deploy command (protocol.Command.to_dict())
    from_slot: str | None = None  # serving when the deployment started (the rollback target)
    to_slot: str | None = None  # the inactive slot being written
    attempts: int = 0  # restarts of this deployment
    reason: str | None = None  # why it is failing / rolling back
    trial_until: float | None = None  # wall clock end of the soak
    last: dict[str, Any] | None = None  # the last report of the previous deployment
    # the last deployment committed, while it may be reverted ({"id", "from_slot",
    # "to_slot"}); dropped when another deployment finishes in any way
    committed: dict[str, Any] | None = None
    saved_at: float = field(default=0.0)

    def to(self, state: str, **changes: Any) -> DeployRecord:
        return replace(self, state=state, **changes)

    @property
    def deployment_id(self) -> str | None:
        return None if self.command is None else str(self.command.get("id"))


def save_record(path: Path, record: DeployRecord) -> DeployRecord:
    record = replace(record, saved_at=time.time())
    atomic_write(path, json.dumps(asdict(record), sort_keys=True, indent=1) + "\n")
    return record


def load_record(path: Path) -> DeployRecord:
    """The saved record, or an idle one. A record that cannot be read is an error (not idle)."""
    if not path.is_file():
        return DeployRecord()
    try:
        raw = json.loads(path.read_bytes())
        record = DeployRecord(**raw)
    except (ValueError, TypeError) as exc:
        raise EdgeMLError(f"{path}: unreadable deploy state ({exc})") from exc
    if record.state not in STATES:
        raise EdgeMLError(f"{path}: unknown deploy state {record.state!r}")
    return record
