"""The MQTT deploy protocol between a fleet controller and a device agent: one place, both sides.

Topics (built by :class:`edgeml.runtime.topics.DeviceTopics`, under the device's root
``<base>/<fleet>/<device>/``)::

    deploy/set          controller -> device, QoS 1, not retained: a command (JSON, below)
    deploy              device -> controller, QoS 1, spooled on the device: a report (JSON)
    deploy/chunks/get   device -> controller, QoS 1: which chunks it wants (JSON)
    deploy/chunks       controller -> device, QoS 1: one chunk per message (binary)

A controller answers ``<base>/<fleet>/+/deploy/chunks/get`` (a shared subscription lets
several of them split the work; any of them may answer, chunks are content-addressed).

Command (``edgeml.deploy/1``)::

    {"schema": "edgeml.deploy/1", "id": "<deployment id>", "action": "install",
     "bundle": {"sha256": "<hex of the whole file>", "size": <bytes>, "chunk_size": <bytes>,
                "name": "tiny", "version": 2, "target": "x86_64", "arch": "x86_64"},
     "allow_downgrade": false, "soak_s": 30.0,
     "gates": {"max_error_rate": 0.05, "max_p95_ratio": 3.0, "min_requests": 20}}

``name``/``version``/``target``/``arch`` are optional hints used to refuse early; the
agent checks the manifest it receives in any case.

``bundle.url`` (optional, ``http://`` or ``https://``): download the bundle from there
instead of asking for chunks over MQTT (:mod:`edgeml.agent.http_fetch`): ``GET`` with
``Range: bytes=<first missing chunk * chunk_size>-`` (and ``Authorization: Bearer
<--http-token>`` when the agent has one), written into the same partial file and chunk
log, so it resumes after a dropped connection or a restart. ``206`` continues, ``200``
(the server ignored the range) starts again from byte 0, ``408``/``425``/``429``/``5xx``,
timeouts (``--chunk-timeout`` per read) and lost connections are retried with backoff
(0.5 s doubling to ``--reconnect-max-delay``), ``416``, any other ``4xx``, a length that
is not ``size`` and a certificate that does not verify fail the deployment with the
reason. ``chunk_size`` is still required: it is the unit in which progress is logged.
The whole-file sha256 and every other install check are the same.

``action`` ``"rollback"`` and ``"cancel"`` name a deployment by ``id`` (no ``bundle``):

- ``cancel`` during the transfer: give up (``failed``, "cancelled by the controller").
- ``rollback`` during the transfer: the same, reason "rolled back by the controller
  before install"; during the trial: roll back now (``rolled_back``, "rolled back by the
  controller"); when the agent is idle and ``id`` is its last *committed* deployment:
  revert to the slot that deployment replaced, if that slot is still good and holds its
  bundle (``rolled_back``, "rolled back by the controller after commit", ``serving`` the
  old version; the slot it left is emptied for the next deployment). Otherwise
  ``failed`` with reason ``"nothing to roll back: <why>"`` and nothing changes. In the
  short steps between (verifying, switching, committing, rolling back) a command for the
  deployment under way is not answered: repeat it.
- A command for another deployment than the one under way: ``failed``, "busy with
  deployment <id> (<state>)".

A command whose ``id`` already finished is answered with its last report again (commands
are idempotent; a controller may repeat them until it sees a report). For ``rollback``:
a deployment already rolled back (on trial or after commit) answers that ``rolled_back``
again; one that committed is reverted (above); one that failed answers ``failed``,
"nothing to roll back: deployment <id> did not commit (it failed: <reason>)".

Chunk request (``edgeml.chunk-request/1``): ``{"schema": ..., "id": <deployment id>,
"sha256": <bundle>, "chunk_size": <bytes>, "chunks": [<index>, ...]}`` (at most the
agent's window, the lowest missing indexes first; re-asked after a timeout).

Chunk (binary, network byte order): an 84-byte header, then the data::

    magic b"EMLC" | version u8 (1) | 3 zero bytes | index u32 | count u32 | length u32 |
    sha256 of the bundle (32 bytes) | sha256 of the data (32 bytes) | data (length bytes)

The agent rejects a chunk whose magic, version, bundle, count, index, length (truncated or
padded: every chunk but the last is exactly ``chunk_size``) or data sha256 is wrong, and
asks for it again; a duplicate is ignored; order does not matter (written at
``index * chunk_size``). A controller that does not hold the bundle answers with JSON
``{"schema": "edgeml.chunk-error/1", "sha256": ..., "error": "..."}``.

Report (``edgeml.deploy-report/1``)::

    {"schema": ..., "id": <deployment id>, "device": ..., "fleet": ..., "seq": <n>,
     "at": "<ISO time>", "event": "received" | "resumed" | "verified" | "switched" |
     "committed" | "rolled_back" | "failed" | "status", "state": <agent state after it>,
     "reason": "<why>" | null, "bundle": {"name", "version", "sha256"} | null,
     "serving": {"name", "version", "sha256", "slot"}, "progress": {"have", "count"} | null}

``status`` is sent (not spooled, ``seq`` null) each time the agent has (re)subscribed to
its commands: from then on a command reaches it. It names the deployment under way
(``id`` null when idle). A controller sends a command after a ``status``, or repeats it
until it sees a report for its ``id``.

Device-safe: standard library only.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from edgeml.errors import EdgeMLError

__all__ = [
    "CHUNK_HEADER",
    "COMMAND_SCHEMA",
    "EVENTS",
    "MAX_CHUNK_SIZE",
    "REPORT_SCHEMA",
    "BundleOffer",
    "Chunk",
    "ChunkRequest",
    "Command",
    "Gates",
    "ProtocolError",
    "chunk_count",
    "decode_chunk",
    "encode_chunk",
    "encode_chunk_error",
]

COMMAND_SCHEMA = "edgeml.deploy/1"
REPORT_SCHEMA = "edgeml.deploy-report/1"
REQUEST_SCHEMA = "edgeml.chunk-request/1"
CHUNK_ERROR_SCHEMA = "edgeml.chunk-error/1"
ACTIONS = ("install", "rollback", "cancel")
EVENTS = ("received", "resumed", "verified", "switched", "committed", "rolled_back", "failed",
          "status")
MAGIC = b"EMLC"
VERSION = 1
CHUNK_HEADER = struct.Struct(">4sB3xIII32s32s")  # 84 bytes
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
MAX_BUNDLE_SIZE = 4 * 1024 * 1024 * 1024
MAX_URL = 2048
_SHA = re.compile(r"^[0-9a-f]{64}$")
_DEPLOY_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class ProtocolError(EdgeMLError):
    """A malformed command, request or chunk (the message says which field)."""


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


@dataclass(frozen=True)
class Gates:
    """The trial's health gates (see :mod:`edgeml.agent.trial`)."""

    max_error_rate: float = 0.05  # errors / requests on the new version
    max_p95_ratio: float = 3.0  # new p95 latency / the old version's
    min_requests: int = 20  # fewer requests on a side: that gate is not judged

    @classmethod
    def from_dict(cls, raw: Any) -> Gates:
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"max_error_rate", "max_p95_ratio",
                                                    "min_requests"}:
            raise ProtocolError("gates: expected max_error_rate, max_p95_ratio, min_requests")
        d = cls()
        try:
            gates = cls(float(raw.get("max_error_rate", d.max_error_rate)),
                        float(raw.get("max_p95_ratio", d.max_p95_ratio)),
                        int(raw.get("min_requests", d.min_requests)))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"gates: {exc}") from exc
        if not (0 <= gates.max_error_rate <= 1 and gates.max_p95_ratio > 0
                and gates.min_requests >= 1):
            raise ProtocolError("gates: max_error_rate in [0, 1], max_p95_ratio > 0, "
                                "min_requests >= 1")
        return gates

    def to_dict(self) -> dict[str, Any]:
        return {"max_error_rate": self.max_error_rate, "max_p95_ratio": self.max_p95_ratio,
                "min_requests": self.min_requests}


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise ProtocolError(f"bundle.url: expected a string of at most {MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProtocolError("bundle.url: expected http://HOST/... or https://HOST/...")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ProtocolError("bundle.url: spaces or control characters")
    return url


@dataclass(frozen=True)
class BundleOffer:
    """What a command says about the bundle: its identity, size and chunking, plus hints."""

    sha256: str
    size: int
    chunk_size: int
    name: str | None = None
    version: int | None = None
    target: str | None = None
    arch: str | None = None
    url: str | None = None  # http(s): download from there instead of MQTT chunks

    @property
    def count(self) -> int:
        return chunk_count(self.size, self.chunk_size)

    def length(self, index: int) -> int:
        """The exact length of chunk ``index``."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    @classmethod
    def from_dict(cls, raw: Any) -> BundleOffer:
        if not isinstance(raw, dict):
            raise ProtocolError("bundle: expected an object")
        sha, size, chunk = raw.get("sha256"), raw.get("size"), raw.get("chunk_size")
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise ProtocolError("bundle.sha256: expected 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_BUNDLE_SIZE:
            raise ProtocolError(f"bundle.size: expected 1..{MAX_BUNDLE_SIZE} bytes")
        if not isinstance(chunk, int) or isinstance(chunk, bool) \
                or not MIN_CHUNK_SIZE <= chunk <= MAX_CHUNK_SIZE:
            raise ProtocolError(f"bundle.chunk_size: expected {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        version = raw.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise ProtocolError("bundle.version: expected an integer")
        hints = {k: raw.get(k) for k in ("name", "target", "arch")}
        if any(v is not None and not isinstance(v, str) for v in hints.values()):
            raise ProtocolError("bundle.name/target/arch: expected strings")
        url = raw.get("url")
        if url is not None:
            url = _check_url(url)
        return cls(sha, size, chunk, hints["name"], version, hints["target"], hints["arch"], url)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sha256": self.sha256, "size": self.size,
                               "chunk_size": self.chunk_size}
        for key in ("name", "version", "target", "arch", "url"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class Command:
    """A ``deploy/set`` command."""

    id: str
    action: str = "install"
    bundle: BundleOffer | None = None
    allow_downgrade: bool = False
    soak_s: float = 30.0
    gates: Gates = field(default_factory=Gates)

    @classmethod
    def decode(cls, payload: bytes) -> Command:
        try:
            raw = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"command: not JSON ({exc})") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Command:
        if not isinstance(raw, dict) or raw.get("schema") != COMMAND_SCHEMA:
            raise ProtocolError(f"command: schema must be {COMMAND_SCHEMA!r}")
        ident, action = raw.get("id"), raw.get("action", "install")
        if not isinstance(ident, str) or not _DEPLOY_ID.match(ident):
            raise ProtocolError("command.id: expected 1-128 of [A-Za-z0-9_.:-]")
        if action not in ACTIONS:
            raise ProtocolError(f"command.action: {action!r} is not one of {', '.join(ACTIONS)}")
        soak = raw.get("soak_s", 30.0)
        if isinstance(soak, bool) or not isinstance(soak, (int, float)) or not 0 <= soak <= 86400:
            raise ProtocolError("command.soak_s: expected 0..86400 seconds")
        bundle = BundleOffer.from_dict(raw.get("bundle")) if action == "install" else None
        return cls(ident, action, bundle, bool(raw.get("allow_downgrade", False)), float(soak),
                   Gates.from_dict(raw.get("gates")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": COMMAND_SCHEMA, "id": self.id, "action": self.action}
        if self.bundle is not None:
            out.update(bundle=self.bundle.to_dict(), allow_downgrade=self.allow_downgrade,
                       soak_s=self.soak_s, gates=self.gates.to_dict())
        return out

    def encode(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()


@dataclass(frozen=True)
class ChunkRequest:
    id: str
    sha256: str
    chunk_size: int
    chunks: tuple[int, ...]

    def encode(self) -> bytes:
        return json.dumps({"schema": REQUEST_SCHEMA, "id": self.id, "sha256": self.sha256,
                           "chunk_size": self.chunk_size, "chunks": list(self.chunks)}).encode()

    @classmethod
    def decode(cls, payload: bytes, max_chunks: int = 256) -> ChunkRequest:
        try:
            raw = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"chunk request: not JSON ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("schema") != REQUEST_SCHEMA:
            raise ProtocolError(f"chunk request: schema must be {REQUEST_SCHEMA!r}")
        chunks, sha, size = raw.get("chunks"), raw.get("sha256"), raw.get("chunk_size")
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise ProtocolError("chunk request: sha256: expected 64 hex digits")
        if not isinstance(size, int) or not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
            raise ProtocolError("chunk request: chunk_size out of range")
        if not isinstance(chunks, list) or not 0 < len(chunks) <= max_chunks or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in chunks):
            raise ProtocolError(f"chunk request: chunks: 1..{max_chunks} indexes >= 0")
        return cls(str(raw.get("id", "")), sha, size, tuple(chunks))


@dataclass(frozen=True)
class Chunk:
    index: int
    count: int
    bundle_sha256: str
    data: bytes


def encode_chunk(bundle_sha256: str, index: int, count: int, data: bytes) -> bytes:
    header = CHUNK_HEADER.pack(MAGIC, VERSION, index, count, len(data),
                               bytes.fromhex(bundle_sha256), hashlib.sha256(data).digest())
    return header + data


def encode_chunk_error(bundle_sha256: str, error: str) -> bytes:
    return json.dumps({"schema": CHUNK_ERROR_SCHEMA, "sha256": bundle_sha256,
                       "error": error}).encode()


def decode_chunk(payload: bytes, offer: BundleOffer) -> Chunk:
    """Check a chunk against the offer; :class:`ProtocolError` says what is wrong with it."""
    if payload[:1] == b"{":
        try:
            raw = json.loads(payload)
        except ValueError:
            raw = {}
        if isinstance(raw, dict) and raw.get("schema") == CHUNK_ERROR_SCHEMA:
            raise ProtocolError(f"the source refused: {raw.get('error')}")
    if len(payload) < CHUNK_HEADER.size:
        raise ProtocolError(f"chunk truncated: {len(payload)} bytes, no complete header")
    magic, version, index, count, length, bundle, digest = CHUNK_HEADER.unpack_from(payload)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError("not an edgeml chunk (magic or version)")
    if bundle.hex() != offer.sha256:
        raise ProtocolError(f"chunk {index} belongs to another bundle")
    if count != offer.count or index >= count:
        raise ProtocolError(f"chunk {index} of {count}: the bundle has {offer.count} chunks")
    data = payload[CHUNK_HEADER.size:]
    if len(data) != length or length != offer.length(index):
        raise ProtocolError(f"chunk {index}: {len(data)} bytes (header {length}), "
                            f"expected {offer.length(index)}: truncated or padded")
    if hashlib.sha256(data).digest() != digest:
        raise ProtocolError(f"chunk {index}: sha256 does not match its data (corrupted)")
    return Chunk(index, count, offer.sha256, data)
