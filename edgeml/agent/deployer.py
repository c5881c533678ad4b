"""The deployer: drives :mod:`edgeml.agent.machine` with commands and chunks from MQTT.

One thread (:meth:`Deployer.start`) loops: take the link's events (commands, chunks,
acknowledgements), run the step of the current state, send spooled reports. Every
transition goes through :meth:`Deployer.fire`: the table gives the next state, the record
is saved durably, then the report is spooled, then the next step may run.
:meth:`Deployer.recover` applies the resume table before anything is served.

Fault injection for the crash tests: ``EDGEML_AGENT_PAUSE_AT=<state>`` (or
``downloading:<n>``, after n chunks) makes the thread print ``agent: paused in <state>``
on stdout and stop right after the record of that state is saved, so a test can
``kill -9`` the agent at that exact step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edgeml.agent import machine as m
from edgeml.agent.config import AgentSettings
from edgeml.agent.http_fetch import HttpFetch
from edgeml.agent.install import InstallRefused, check_compat, file_sha256, seed_state
from edgeml.agent.link import DeployLink
from edgeml.agent.protocol import (
    CHUNK_HEADER,
    COMMAND_SCHEMA,
    REPORT_SCHEMA,
    BundleOffer,
    Chunk,
    ChunkRequest,
    Command,
    ProtocolError,
    decode_chunk,
)
from edgeml.agent.slots import StateDir
from edgeml.agent.steps import InstallSteps
from edgeml.agent.transfer import Download, discard_partial
from edgeml.agent.trial import MeterSnapshot
from edgeml.bundle.reader import open_bundle
from edgeml.errors import EdgeMLError
from edgeml.runtime.sampling import iso_utc
from edgeml.runtime.topics import DeviceTopics, default_device_id

__all__ = ["Deployer"]

log = logging.getLogger(__name__)

_REPORTS = {"deploy": "received", "verified": "verified", "switched": "switched",
            "committed": "committed", "rolled_back": "rolled_back", "cleaned": "failed"}


class Deployer(InstallSteps):
    def __init__(self, settings: AgentSettings, state: StateDir) -> None:
        self.settings = settings
        self.state = state
        tel = settings.serve.telemetry
        self.topics = DeviceTopics.create(tel.base_topic, tel.fleet,
                                          tel.device_id or default_device_id())
        assert settings.serve.broker is not None
        self.link = DeployLink(settings.serve.broker, self.topics, state.outbox,
                               tel.reconnect_max_delay)
        self.record = m.load_record(state.record_path)
        self.holder: Any = None  # the ModelHolder once serving
        self.download: Download | None = None
        self.fetch: HttpFetch | None = None  # the HTTP(S) download thread (bundle.url)
        self.baseline: MeterSnapshot | None = None
        self._pause = os.environ.get("EDGEML_AGENT_PAUSE_AT", "")
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what is served -------------------------------------------------------------------

    def seed(self, bundle: Path) -> None:
        """With no current slot yet: install ``bundle`` as slot a, committed (first boot)."""
        seed_state(self.state, bundle, self.settings.policy.public_key)

    def serving_path(self) -> Path:
        slot = self.state.current()[0]
        if slot is None or not self.state.bundle_path(slot).is_file():
            raise EdgeMLError(f"no model installed in {self.state.root}: give --bundle FILE "
                              "for the first one")
        return self.state.bundle_path(slot)

    def serving(self) -> dict[str, Any]:
        slot = self.state.current()[0]
        info = self.state.slot_info(slot) if slot else None
        return {"slot": slot, "name": info.name if info else None,
                "version": info.version if info else None,
                "sha256": info.sha256 if info else None}

    def _serving_manifest(self) -> Any:
        if self.holder is not None:
            return self.holder.predictor.manifest
        return open_bundle(self.serving_path()).manifest

    # -- the machine ------------------------------------------------------------------------

    def fire(self, event: str, reason: str | None = None, **changes: Any) -> None:
        state = m.next_state(self.record.state, event)
        if reason is not None:
            changes["reason"] = reason
        record = self.record.to(state, **changes)
        report_event = _REPORTS.get(event)
        report = self._report_body(report_event, record) if report_event else None
        if state == m.IDLE:  # the deployment is over: keep its last report, nothing else
            committed = None  # and, after a commit, what a revert needs
            if event == "committed":
                committed = {"id": record.deployment_id, "from_slot": record.from_slot,
                             "to_slot": record.to_slot,
                             "bundle": report["bundle"] if report else None}
            record = m.DeployRecord(last=report, committed=committed)
        self.record = m.save_record(self.state.record_path, record)
        if report is not None:
            self._send(report)
        log.info("deploy %s: %s -> %s%s", report and report["id"], event, state,
                 f" ({reason})" if reason else "")
        self._maybe_pause(state)

    def _report_body(self, event: str, record: m.DeployRecord,
                     progress: dict[str, int] | None = None) -> dict[str, Any]:
        cmd = record.command or {}
        bundle = cmd.get("bundle") or {}
        return {"schema": REPORT_SCHEMA, "id": cmd.get("id"), "device": self.topics.device,
                "fleet": self.topics.fleet, "event": event, "state": record.state,
                "reason": record.reason,
                "bundle": {k: bundle.get(k) for k in ("name", "version", "sha256")}
                if bundle else None,
                "serving": self.serving(), "progress": progress}

    def _send(self, body: dict[str, Any]) -> None:
        def build(seq: int) -> bytes:
            return json.dumps({**body, "seq": seq, "at": iso_utc(time.time())},
                              sort_keys=True).encode()
        self.link.report(build)

    def _refuse(self, ident: str, reason: str, bundle: BundleOffer | None = None) -> None:
        """A command refused before any deployment started (nothing changes)."""
        body = self._report_body("failed", m.DeployRecord(
            reason=reason, command={"id": ident, "bundle": bundle.to_dict() if bundle else {}}))
        self._send(body)
        log.warning("deploy %s refused: %s", ident, reason)

    def _maybe_pause(self, state: str, chunks: int | None = None) -> None:
        want, _, count = self._pause.partition(":")
        if want != state or (count and (chunks is None or chunks < int(count))):
            return
        if not count and chunks is not None:
            return
        sys.stdout.write(f"agent: paused in {state}\n")
        sys.stdout.flush()
        while True:  # until the test kills the process
            time.sleep(60)

    def recover(self) -> None:
        """Apply the resume table (before serving): finish or roll back what a crash left."""
        rec = self.record
        if rec.state == m.IDLE:
            return
        state, reason = m.resume_state(rec)
        rec = rec.to(state, attempts=rec.attempts + 1, reason=reason or rec.reason)
        self.record = m.save_record(self.state.record_path, rec)
        log.warning("resuming deployment %s in %s (attempt %d)%s", rec.deployment_id, state,
                    rec.attempts, f": {reason}" if reason else "")
        self._maybe_pause(state)
        while self.record.state in (m.ROLLING_BACK, m.COMMITTING, m.FAILING):
            self.step()

    # -- the thread ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgeml-deploy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        if self.fetch is not None:
            self.fetch.stop()
            self.fetch = None
        if self.download is not None:
            self.download.close()
        self.link.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.link.ensure()
                busy = self.record.state == m.DOWNLOADING
                for event in self.link.events(0.02 if busy else 0.2):
                    self._handle(event)
                self.step()
                self.link.pump_outbox()
            except Exception:  # keep the agent alive; the error is in the log
                log.exception("deploy agent error")
                time.sleep(1.0)

    def _handle(self, event: tuple[Any, ...]) -> None:
        if event[0] == "connected" and self.download is not None:
            self.download.forget_requests()
        if event[0] == "subscribed":  # commands reach us from now on: say where we are
            body = self._report_body("status", self.record)
            self.link.publish(self.topics.deploy, json.dumps(
                {**body, "seq": None, "at": iso_utc(time.time())}, sort_keys=True).encode())
        if event[0] != "message":
            return
        _, topic, payload = event
        if topic == self.topics.deploy_set:
            self._on_command(payload)
        elif topic == self.topics.deploy_chunks:
            self._on_chunk(payload)

    # -- commands -------------------------------------------------------------------------------

    def _on_command(self, payload: bytes) -> None:
        try:
            cmd = Command.decode(payload)
        except ProtocolError as exc:
            ident = "?"
            with contextlib.suppress(ValueError, AttributeError):
                ident = str(json.loads(payload).get("id", "?"))
            self._refuse(ident, str(exc))
            return
        rec = self.record
        current = rec.deployment_id
        if current is not None and current != cmd.id:
            self._refuse(cmd.id, f"busy with deployment {current} ({rec.state})", cmd.bundle)
        elif current == cmd.id:
            if cmd.action == "cancel" and rec.state == m.DOWNLOADING:
                self._drop_download()
                self.fire("cancel", "cancelled by the controller")
            elif cmd.action == "rollback" and rec.state == m.DOWNLOADING:
                self._drop_download()
                self.fire("cancel", "rolled back by the controller before install")
            elif cmd.action == "rollback" and rec.state == m.TRIAL:
                self.fire("rollback", "rolled back by the controller")
            # else a short step is under way: the controller repeats the command
        elif cmd.action == "rollback":
            self._revert(cmd.id)
        elif rec.last is not None and rec.last.get("id") == cmd.id:
            self._send(rec.last)  # a repeated command: the same answer again
        elif cmd.action != "install" or cmd.bundle is None:
            self._refuse(cmd.id, f"no deployment {cmd.id} to {cmd.action}")
        else:
            self._start(cmd, cmd.bundle)

    def _start(self, cmd: Command, offer: BundleOffer) -> None:
        serving = self.serving()
        if offer.sha256 == serving["sha256"]:
            self._send({**self._report_body("committed", m.DeployRecord(
                command=cmd.to_dict())), "reason": "already serving this bundle"})
            return
        try:
            check_compat(self.settings.policy, offer.name, offer.version, offer.target,
                         offer.arch, self._serving_manifest(), cmd.allow_downgrade)
        except InstallRefused as exc:
            self._refuse(cmd.id, str(exc), offer)
            return
        current = serving["slot"]
        target = self.state.other(current)
        self.state.empty(target, f"being written by deployment {cmd.id}")  # bad before written
        discard_partial(self.state.slot_dir(target))
        self.fire("deploy", command=cmd.to_dict(), from_slot=current, to_slot=target,
                  attempts=0, reason=None, trial_until=None, committed=None)

    def _revert(self, ident: str) -> None:
        """``rollback`` while idle: revert the last committed deployment, if it is ``ident``."""
        rec = self.record
        last = rec.last or {}
        if last.get("id") == ident and last.get("event") == "rolled_back":
            self._send(last)  # already rolled back: the same answer again
            return
        why = self._revert_blocker(ident)
        if why is not None:
            self._refuse(ident, f"nothing to roll back: {why}")
            return
        c = rec.committed
        assert c is not None
        command = {"schema": COMMAND_SCHEMA, "id": ident, "action": "rollback",
                   "bundle": c.get("bundle") or {}}
        self.fire("revert", "rolled back by the controller after commit", command=command,
                  from_slot=c["from_slot"], to_slot=c["to_slot"], attempts=0,
                  trial_until=None, committed=None)

    def _revert_blocker(self, ident: str) -> str | None:
        """Why deployment ``ident`` cannot be reverted now (None: it can)."""
        rec, last = self.record, self.record.last or {}
        c = rec.committed
        if c is None or c.get("id") != ident:
            if last.get("id") == ident:
                return (f"deployment {ident} did not commit (it {last.get('event')}: "
                        f"{last.get('reason')})")
            if c is not None:
                return f"deployment {ident} is not the last committed one ({c.get('id')} is)"
            return f"no committed deployment {ident} on this device"
        frm, to = c.get("from_slot"), c.get("to_slot")
        current = self.state.current()[0]
        if frm is None or to is None or current != to:
            return f"slot {to} of deployment {ident} is no longer the one serving"
        info = self.state.slot_info(frm)
        if info.status != "good":
            return f"the previous slot {frm} is {info.status}" + (
                f" ({info.reason})" if info.reason else "")
        try:
            digest = file_sha256(self.state.bundle_path(frm))
        except OSError as exc:
            return f"the previous slot {frm} cannot be read ({exc.strerror or exc})"
        if digest != info.sha256:
            return f"the previous slot {frm} does not hold its bundle (sha256 differs)"
        return None

    # -- the steps ------------------------------------------------------------------------------

    def step(self) -> None:
        state = self.record.state
        if state == m.DOWNLOADING:
            self._step_download()
        elif state == m.VERIFYING:
            self._step_verify()
        elif state == m.SWITCHING:
            self._step_switch()
        elif state == m.TRIAL:
            self._step_trial()
        elif state == m.COMMITTING:
            self._step_commit()
        elif state == m.ROLLING_BACK:
            self._step_rollback()
        elif state == m.FAILING:
            self._step_fail()

    def _step_download(self) -> None:
        cmd = self.command
        assert cmd is not None and cmd.bundle is not None and self.record.to_slot is not None
        if self.download is None:
            dl = Download(self.state.slot_dir(self.record.to_slot), cmd.bundle, cmd.id)
            try:
                have = dl.open()
            except OSError as exc:
                dl.discard()
                self.fire("error", f"cannot write the download: {exc.strerror or exc}")
                return
            self.download = dl
            if have:
                self._send(self._report_body("resumed", self.record,
                                             {"have": have, "count": cmd.bundle.count}))
        dl = self.download
        if dl.complete:
            self._stop_fetch()
            dl.finish()
            self.download = None
            self.fire("downloaded")
            return
        if cmd.bundle.url is not None:
            self._step_http(dl, cmd.bundle)
            return
        if self.link.connected:
            wanted = dl.to_request(self.settings.window, self.settings.chunk_timeout)
            if wanted:
                req = ChunkRequest(cmd.id, cmd.bundle.sha256, cmd.bundle.chunk_size, tuple(wanted))
                self.link.publish(self.topics.deploy_chunks_get, req.encode())

    def _on_chunk(self, payload: bytes) -> None:
        dl = self.download
        if self.record.state != m.DOWNLOADING or dl is None:
            return  # late or unsolicited: ignored
        try:
            chunk = decode_chunk(payload, dl.offer)
        except ProtocolError as exc:
            dl.rejected += 1
            if str(exc).startswith("the source refused"):
                self._drop_download()
                self.fire("error", str(exc))
                return
            log.warning("rejected a chunk: %s", exc)
            if len(payload) >= CHUNK_HEADER.size:  # ask for that index again at once
                dl.requested.pop(CHUNK_HEADER.unpack_from(payload)[2], None)
            return
        try:
            dl.write(chunk)
        except OSError as exc:
            self._drop_download()  # free the space first: the record and report need some
            self.fire("error", f"cannot write the download: {exc.strerror or exc}")
            return
        self._maybe_pause(m.DOWNLOADING, len(dl.have))

    # -- HTTP(S) download (bundle.url) ---------------------------------------------------------

    def _step_http(self, dl: Download, offer: BundleOffer) -> None:
        assert offer.url is not None
        fetch = self.fetch
        if fetch is None or not fetch.running:
            if fetch is not None:
                fetch.stop()  # ended without the whole file (cannot happen): start again
            first = dl.first_missing() or 0
            fetch = self.fetch = HttpFetch(
                offer.url, offer, first, token=self.settings.http_token,
                timeout=self.settings.chunk_timeout,
                max_delay=float(self.settings.serve.telemetry.reconnect_max_delay)).start()
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            events = fetch.poll(0.05)
            if not events:
                return
            for event in events:
                if event[0] == "chunk":
                    try:
                        dl.write(Chunk(event[1], offer.count, offer.sha256, event[2]))
                    except OSError as exc:
                        self._drop_download()
                        self.fire("error", f"cannot write the download: {exc.strerror or exc}")
                        return
                    self._maybe_pause(m.DOWNLOADING, len(dl.have))
                elif event[0] == "error":
                    self._drop_download()
                    self.fire("error", event[1])
                    return
                elif event[0] == "done":
                    return
