"""The local steps of a deployment, after the transfer: verify, switch, trial, commit, roll back.

:class:`InstallSteps` is mixed into :class:`~edgeml.agent.deployer.Deployer`; each step
ends with one ``fire(event)`` (the transition table decides what comes next). All of them
are idempotent, so a step interrupted by a crash can run again (see the resume table).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgeml.agent import machine as m
from edgeml.agent.config import AgentSettings
from edgeml.agent.install import InstallRefused, verify_download
from edgeml.agent.protocol import Command, Gates
from edgeml.agent.slots import SlotInfo, StateDir
from edgeml.agent.transfer import Download, discard_partial
from edgeml.agent.trial import MeteredStats, MeterSnapshot, judge
from edgeml.bundle.reader import open_bundle
from edgeml.bundle.verify import verify_bundle
from edgeml.errors import EdgeMLError

__all__ = ["InstallSteps"]


class InstallSteps:
    settings: AgentSettings
    state: StateDir
    record: m.DeployRecord
    holder: Any
    download: Download | None
    fetch: Any  # an edgeml.agent.http_fetch.HttpFetch while downloading from a URL
    baseline: MeterSnapshot | None

    @property
    def command(self) -> Command | None:
        return Command.from_dict(self.record.command) if self.record.command else None

    def fire(self, event: str, reason: str | None = None, **changes: Any) -> None:
        raise NotImplementedError

    def _serving_manifest(self) -> Any:
        raise NotImplementedError

    def _stop_fetch(self) -> None:
        fetch = getattr(self, "fetch", None)
        if fetch is not None:
            fetch.stop()
            self.fetch = None

    def _drop_download(self) -> None:
        self._stop_fetch()
        if self.download is not None:
            self.download.discard()
            self.download = None

    def _part(self) -> Path:
        assert self.record.to_slot is not None
        return self.state.slot_dir(self.record.to_slot) / "download.part"

    def _step_verify(self) -> None:
        cmd = self.command
        assert cmd is not None and cmd.bundle is not None
        part = self._part()
        if not part.is_file():
            self.fire("error", "the downloaded file is gone")
            return
        try:
            man = verify_download(part, cmd.bundle.sha256, self.settings.policy,
                                  self._serving_manifest(), cmd.allow_downgrade)
        except InstallRefused as exc:
            discard_partial(part.parent)
            self.fire("error", str(exc))
            return
        bundle = {**(self.record.command or {}).get("bundle", {}), "name": man.name,
                  "version": man.version}
        self.fire("verified", command={**(self.record.command or {}), "bundle": bundle})

    def _load(self, path: Path) -> tuple[Any, Any]:
        from edgeml.runtime.predictor import Predictor

        predictor = Predictor(path, intra_op_threads=self.settings.serve.intra_op_threads)
        return predictor, MeteredStats(predictor.manifest, sha256=predictor.sha256)

    def _step_switch(self) -> None:
        cmd, to, frm = self.command, self.record.to_slot, self.record.from_slot
        assert cmd is not None and cmd.bundle is not None and to is not None
        try:
            part = self._part()
            if part.is_file():
                man = open_bundle(part).manifest
                self.state.install_file(to, part, SlotInfo(to, "pending", man.name, man.version,
                                                           cmd.bundle.sha256))
                discard_partial(part.parent)  # the chunk log and its meta
            predictor, stats = self._load(self.state.bundle_path(to))
            self.state.point(to, frm)  # the switch: atomic rename + fsync
            if self.holder is not None:
                _old, old_stats = self.holder.swap(predictor, stats)
                meter = getattr(old_stats, "meter", None)
                self.baseline = meter.snapshot() if meter is not None else None
        except (EdgeMLError, OSError) as exc:
            self.fire("error", f"switch failed: {exc}")
            return
        self.fire("switched", trial_until=time.time() + cmd.soak_s)

    def _step_trial(self) -> None:
        cmd, to = self.command, self.record.to_slot
        assert cmd is not None and to is not None
        if time.time() < (self.record.trial_until or 0.0):
            return
        reason = None
        stats = getattr(self.holder, "stats", None)
        if isinstance(stats, MeteredStats):
            reason = judge(stats.meter.snapshot(), self.baseline, cmd.gates or Gates())
        if reason is None:
            check = verify_bundle(self.state.bundle_path(to), raise_on_failure=False)
            if check.failed is not None:
                reason = f"self-test again: {check.failed.name} check failed: {check.failed.detail}"
        if reason is None:
            self.fire("passed")
        else:
            self.fire("failed", f"trial failed: {reason}")

    def _step_commit(self) -> None:
        to = self.record.to_slot
        assert to is not None
        info = self.state.slot_info(to)
        self.state.mark(SlotInfo(to, "good", info.name, info.version, info.sha256))
        self.fire("committed")

    def _step_rollback(self) -> None:
        frm, to = self.record.from_slot, self.record.to_slot
        assert frm is not None and to is not None
        self.state.point(frm, None)
        if self._serving_new():
            predictor, stats = self._load(self.state.bundle_path(frm))
            self.holder.swap(predictor, stats)
        self.state.empty(to, self.record.reason or "rolled back")
        discard_partial(self.state.slot_dir(to))
        self.fire("rolled_back")

    def _serving_new(self) -> bool:
        """Is the running server serving something else than the rollback target?"""
        if self.holder is None or self.record.from_slot is None:
            return False
        path = Path(self.holder.predictor.bundle.path)
        return path != self.state.bundle_path(self.record.from_slot)

    def _step_fail(self) -> None:
        to = self.record.to_slot
        self._drop_download()
        if to is not None:
            discard_partial(self.state.slot_dir(to))
        self.fire("cleaned")
