"""A small, strict HTTP/1.1 server protocol on asyncio (standard library only).

One :class:`HttpProtocol` per connection feeds its bytes to a
:class:`~edgeml.runtime.http_parser.RequestParser` (``Content-Length`` and chunked bodies,
RFC 9110/9112 checks; see that module), hands each complete :class:`Request` to a
synchronous handler and writes the :class:`Response`. Requests on one connection are
answered in order, so keep-alive and pipelining are safe. ``Expect: 100-continue`` is
honoured for HTTP/1.1 clients only. ``HEAD`` is answered like ``GET`` without a body.

Errors found while parsing are answered with a JSON ``{"error": ...}`` and the connection is
closed; the handler never sees them. A body over the limit (``Content-Length`` or chunked) is
answered 413 at once; the rest of the upload is read and dropped for at most
``Limits.drain_timeout`` seconds, then the connection is closed. An exception in the handler,
or a response header that is not a token or holds CR, LF or NUL, is logged and answered 500.

:class:`Limits` (frozen) holds every bound: header block, body, idle and per-request time,
connections, and the request bytes buffered across all connections (a shared
:class:`BufferBudget`: past it, the connection holding more than its fair share gets 503).
``Limits.for_target(manifest.target.serve, **explicit)`` takes the device profile's values
recorded in the bundle and lets explicit settings override them.

Parser decision, from ``bench/bench_http_parser.py`` (same bytes, same dict-of-headers
output; medians over three runs on a shared 2-core box under load 7-9, so read the ratios):
httptools (llhttp, C) takes 0.3-0.6x edgeml's time per request, h11 (pure Python) 5-10x
(one run: edgeml 23 us, httptools 9 us, h11 139 us for a 400-byte inference request). The
difference to httptools is a few microseconds per request on an idle core, against a model
call of 20-100 us plus the JSON work, and httptools would be a compiled device dependency outside
stdlib/numpy/onnxruntime/paho/click; h11 is slower than ours. So the stdlib parser stays,
and ``tests/test_http_differential.py`` holds it to h11's verdicts on generated requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from email.utils import formatdate
from typing import Any

from edgeml.bundle.manifest import ServeLimits
from edgeml.runtime.http_parser import ParseError, Request, RequestParser

__all__ = ["ERROR_KINDS", "BufferBudget", "Handler", "HttpProtocol", "Limits", "Request",
           "Response", "json_error"]

log = logging.getLogger("edgeml.runtime.http")

# error counter kinds for protocol-level failures (the handler never sees these requests)
ERROR_KINDS = {400: "bad_request", 408: "timeout", 411: "length_required", 413: "too_large",
               431: "too_large", 500: "internal", 501: "bad_request", 503: "busy",
               505: "bad_request"}
_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_JSON = b"application/json"
_HEADER_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(rb"[^\x00\r\n]*")
_date_now = 0
_date_bytes = b""


def _date() -> bytes:
    """The Date header value, formatted once per second."""
    global _date_now, _date_bytes
    now = int(time.time())
    if now != _date_now:
        _date_now = now
        _date_bytes = formatdate(now, usegmt=True).encode()
    return _date_bytes


@dataclass(frozen=True)
class Limits:
    """Everything one HTTP server bounds. Device profiles set some (``serve:``)."""

    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body_bytes: int = 8 * 1024 * 1024
    idle_timeout: float = 75.0  # keep-alive connection with no request in progress
    request_timeout: float = 30.0  # from the first byte of a request to its last
    max_connections: int = 256  # beyond: the least recently active connection is dropped
    max_buffered_bytes: int = 256 * 1024 * 1024  # request bytes held across all connections
    drain_timeout: float = 5.0  # reading and dropping the rest of an upload after a 413

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"limit {f.name} must be > 0, not {getattr(self, f.name)!r}")

    @classmethod
    def for_target(cls, serve: ServeLimits | None = None, **explicit: float | None) -> Limits:
        """The device profile's limits (from the manifest), then ``explicit`` non-None ones."""
        values: dict[str, Any] = {}
        if serve is not None:
            values.update({k: v for k, v in asdict(serve).items() if v is not None})
        values.update({k: v for k, v in explicit.items() if v is not None})
        return cls(**values)


class BufferBudget:
    """Request bytes buffered by all connections of a server (thread-safe: workers share it)."""

    __slots__ = ("_lock", "fair_share", "limit", "used")

    def __init__(self, limit: int, connections: int) -> None:
        self.limit = limit
        self.fair_share = max(64 * 1024, limit // max(1, connections))
        self.used = 0
        self._lock = threading.Lock()

    def add(self, delta: int) -> int:
        with self._lock:
            self.used += delta
            return self.used


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, status: int, body: bytes, content_type: bytes = _JSON,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


Handler = Callable[[Request], Response]


def json_error(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    """An Open Inference Protocol error response: ``{"error": message}``."""
    return Response(status, json.dumps({"error": message}).encode(), _JSON, headers)


def _safe_headers(r: Response) -> bool:
    """Header names are tokens and no value can end the header line early (CR, LF, NUL)."""
    if _HEADER_VALUE.fullmatch(r.content_type) is None:
        return False
    return all(_HEADER_NAME.fullmatch(k) is not None and _HEADER_VALUE.fullmatch(v) is not None
               for k, v in r.headers or ())


class HttpProtocol(asyncio.Protocol):
    """One client connection. ``on_close`` is called once when it ends."""

    def __init__(self, handler: Handler, limits: Limits,
                 on_open: Callable[[HttpProtocol], None],
                 on_close: Callable[[HttpProtocol], None],
                 on_error: Callable[[str], None] | None = None,
                 budget: BufferBudget | None = None) -> None:
        self._handler = handler
        self._on_error = on_error
        self._limits = limits
        self._on_open = on_open
        self._on_close = on_close
        self._budget = budget
        self._held = 0  # bytes of ours counted in the budget
        self.transport: asyncio.Transport | None = None
        self._parser = RequestParser(limits.max_header_bytes, limits.max_headers,
                                     limits.max_body_bytes)
        self._paused = False
        self._closing = False
        self._discard_until: float | None = None
        self.last_activity = time.monotonic()
        self.request_started: float | None = None
        self._closed_at: float | None = None

    # -- asyncio callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._on_open(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._parser.close()
        self._release()
        self._on_close(self)

    def pause_writing(self) -> None:
        self._paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._guarded(self._process)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.last_activity = now
        if self._closing or self._discard_until is not None:
            return
        parser = self._parser
        if not parser.in_request:
            self.request_started = now
        parser.feed(data)
        self._guarded(self._process)
        if self._budget is not None and not self._closing:
            self._account(self._budget)

    # -- parsing and answering ------------------------------------------------------

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except ParseError as exc:
            if exc.status == 413:
                self._reject_body(exc.message)
            else:
                self._fail(exc.status, exc.message)
        except Exception:
            log.exception("unexpected error while serving a connection")
            self._fail(500, "internal server error")

    def _process(self) -> None:
        parser = self._parser
        while not self._paused and not self._closing:
            request = parser.next_request()
            if request is None:
                if parser.continue_wanted and self.transport is not None:
                    parser.continue_wanted = False
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            self.request_started = time.monotonic() if parser.in_request else None
            self._dispatch(request)

    def _account(self, budget: BufferBudget) -> None:
        """Track what we buffer; over the server's budget, the greedy connection gets 503."""
        held = self._parser.buffered
        delta = held - self._held
        if not delta:
            return
        self._held = held
        used = budget.add(delta)
        if delta > 0 and used > budget.limit and held > budget.fair_share:
            self._fail(503, "the server holds too much request data: try again later")

    def _release(self) -> None:
        if self._held and self._budget is not None:
            self._budget.add(-self._held)
        self._held = 0

    def _dispatch(self, request: Request) -> None:
        try:
            response = self._handler(request)
        except Exception:
            log.exception("unexpected error handling %s %s", request.method, request.path)
            response = json_error(500, "internal server error")
        self._write(response, request.keep_alive, request.version, request.method == "HEAD")
        if not request.keep_alive:
            self._close()

    def _write(self, r: Response, keep_alive: bool, version: str, head_only: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if (r.headers or r.content_type is not _JSON) and not _safe_headers(r):
            log.error("refusing to send a response header with CR, LF or NUL (status %d)", r.status)
            r = json_error(500, "internal server error")
        status = _STATUS.get(r.status) or f"HTTP/1.1 {r.status} Unknown\r\n".encode()
        out = [status, b"Server: edgeml\r\nDate: ", _date(), b"\r\nContent-Type: ", r.content_type,
               b"\r\nContent-Length: ", str(len(r.body)).encode(), b"\r\n"]
        if r.headers:
            for k, v in r.headers:
                out += (k, b": ", v, b"\r\n")
        if not keep_alive:
            out.append(b"Connection: close\r\n")
        elif version == "HTTP/1.0":
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        if not head_only:
            out.append(r.body)
        transport.write(b"".join(out))

    def _fail(self, status: int, message: str) -> None:
        """Answer a protocol-level error and close the connection."""
        if self._closing:
            return
        self._count(status)
        self._write(json_error(status, message), False, "HTTP/1.1")
        self._close()

    def _reject_body(self, message: str) -> None:
        """413 before reading the rest of an oversized body; drain it for a while, then close."""
        self._count(413)
        self._write(json_error(413, message), False, "HTTP/1.1")
        self._parser.close()
        self._release()
        self._discard_until = time.monotonic() + self._limits.drain_timeout
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()  # half-close: the client reads the 413, we drain its upload
        else:
            self._close()

    def _count(self, status: int) -> None:
        if self._on_error is not None:
            try:
                self._on_error(ERROR_KINDS.get(status, "bad_request"))
            except Exception:
                log.exception("error counter failed")

    def _close(self) -> None:
        self._closing = True
        self._parser.close()
        self._release()
        if self._closed_at is None:
            self._closed_at = time.monotonic()
        if self.transport is not None:
            self.transport.close()

    @property
    def closing(self) -> bool:
        return self._closing

    def evict(self) -> None:
        """Close to make room for a new connection (the server is at its connection limit)."""
        if not self._closing:
            self._count(503)
            self._close()
            if self.transport is not None:
                self.transport.abort()  # now: unsent output is not worth the slot

    # -- timeouts (called by the server every second or so) ---------------------------

    def check_timeouts(self, now: float) -> None:
        transport = self.transport
        if transport is None:
            return
        limits = self._limits
        if transport.is_closing():
            # close() waits for unsent output: a client that stopped reading gets aborted
            if self._closed_at is not None and now - self._closed_at > 5.0:
                transport.abort()
            return
        if self._paused and now - self.last_activity > limits.idle_timeout:
            transport.abort()  # our answers pile up unread
            return
        if self._discard_until is not None:
            if now > self._discard_until or now - self.last_activity > 2.0:
                self._close()
        elif self._parser.in_request:
            started = self.request_started or self.last_activity
            if now - started > limits.request_timeout:
                self._fail(408, "request not received in time")
        elif now - self.last_activity > limits.idle_timeout:
            self._close()

    def shutdown(self) -> None:
        """Close now if idle; otherwise after the response in progress (server stopping)."""
        if not self._parser.in_request:
            self._close()
