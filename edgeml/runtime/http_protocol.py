"""A small, strict HTTP/1.1 server protocol on asyncio (standard library only).

One :class:`HttpProtocol` per connection parses requests (request line, headers,
``Content-Length`` bodies), hands each complete :class:`Request` to a synchronous handler
and writes the :class:`Response`. Requests on one connection are answered in order, so
keep-alive and pipelining are safe. Limits: header block size, body size (413 as soon as
the ``Content-Length`` is seen, before reading the body), ``Transfer-Encoding`` (411: send
a ``Content-Length``), an idle timeout between requests and a timeout for a request to
arrive in full (the owner calls :meth:`HttpProtocol.check_timeouts` periodically).
``Expect: 100-continue`` is honoured. ``HEAD`` is answered like ``GET`` without a body.
Errors found while parsing are answered with a JSON ``{"error": ...}`` and the connection is
closed; the handler never sees them. An exception in the handler is logged and answered
with a generic 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

__all__ = ["ERROR_KINDS", "Handler", "HttpProtocol", "Limits", "Request", "Response", "json_error"]

log = logging.getLogger("edgeml.runtime.http")

# error counter kinds for protocol-level failures (the handler never sees these requests)
ERROR_KINDS = {400: "bad_request", 408: "timeout", 411: "length_required", 413: "too_large",
               431: "too_large", 500: "internal", 505: "bad_request"}
_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_JSON = b"application/json"
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
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body_bytes: int = 8 * 1024 * 1024
    idle_timeout: float = 75.0  # keep-alive connection with no request in progress
    request_timeout: float = 30.0  # from the first byte of a request to its last


class Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "version")

    def __init__(self, method: str, path: str, query: str, version: str,
                 headers: dict[str, str], body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers  # lower-case names
        self.body = body
        self.keep_alive = keep_alive


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


class _Head:
    """A parsed request line and header block, waiting for its body."""

    __slots__ = ("expect_continue", "headers", "keep_alive", "length", "method", "path",
                 "query", "version")
    expect_continue: bool
    headers: dict[str, str]
    keep_alive: bool
    length: int
    method: str
    path: str
    query: str
    version: str


class _ParseError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpProtocol(asyncio.Protocol):
    """One client connection. ``on_close`` is called once when it ends."""

    def __init__(self, handler: Handler, limits: Limits,
                 on_open: Callable[[HttpProtocol], None],
                 on_close: Callable[[HttpProtocol], None],
                 on_error: Callable[[str], None] | None = None) -> None:
        self._handler = handler
        self._on_error = on_error
        self._limits = limits
        self._on_open = on_open
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._head: _Head | None = None
        self._chunks: list[bytes] = []
        self._have = 0
        self._paused = False
        self._closing = False
        self._discarding = False
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
        self._buf = b""
        self._chunks = []
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
        if self._closing or self._discarding:
            return
        head = self._head
        if head is not None:  # waiting for the rest of a body
            self._chunks.append(data)
            self._have += len(data)
            if self._have < head.length:
                return
            joined = b"".join(self._chunks)
            self._chunks = []
            self._head = None
            self._buf = joined[head.length:]
            self.request_started = now if self._buf else None
            self._guarded(self._dispatch, head, joined[: head.length])
        elif self._buf:
            self._buf += data
        else:
            self._buf = data
            self.request_started = now
        self._guarded(self._process)

    # -- parsing --------------------------------------------------------------------

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except _ParseError as exc:
            self._fail(exc.status, exc.message)
        except Exception:
            log.exception("unexpected error while serving a connection")
            self._fail(500, "internal server error")

    def _process(self) -> None:
        limits = self._limits
        while not self._paused and not self._closing and self._head is None and self._buf:
            buf = self._buf
            if buf[:2] == b"\r\n":  # stray CRLF between pipelined requests (RFC 9112 2.2)
                buf = self._buf = buf.lstrip(b"\r\n")
                if not buf:
                    return
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > limits.max_header_bytes:
                    raise _ParseError(431, "request header block too large")
                return
            if end > limits.max_header_bytes:
                raise _ParseError(431, "request header block too large")
            head = self._parse_head(buf[:end])
            rest = buf[end + 4:]
            if head.length > limits.max_body_bytes:
                self._buf = b""
                self._reject_body(head)
                return
            if len(rest) >= head.length:
                self._buf = rest[head.length:]
                if not self._buf:
                    self.request_started = None
                self._dispatch(head, rest[: head.length])
                continue
            self._buf = b""
            self._head = head
            self._chunks = [rest]
            self._have = len(rest)
            if head.expect_continue and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return

    def _parse_head(self, raw: bytes) -> _Head:
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isascii():
            raise _ParseError(400, "malformed request line")
        method, target, version = parts
        if version != "HTTP/1.1" and version != "HTTP/1.0":
            if version.startswith("HTTP/"):
                raise _ParseError(505, f"HTTP version {version[5:]!r} is not supported")
            raise _ParseError(400, "malformed request line")
        if len(lines) - 1 > self._limits.max_headers:
            raise _ParseError(431, "too many request headers")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name[-1] in " \t" or name[0] in " \t":
                raise _ParseError(400, "malformed header line")
            key = name.lower()
            value = value.strip(" \t")
            if key in headers:
                if key == "content-length" and headers[key] != value:
                    raise _ParseError(400, "conflicting Content-Length headers")
                value = f"{headers[key]}, {value}"
            headers[key] = value
        head = _Head()
        head.method = method
        head.version = version
        head.headers = headers
        if "transfer-encoding" in headers:
            raise _ParseError(411, "Transfer-Encoding is not supported: send a Content-Length")
        length = headers.get("content-length")
        if length is None:
            head.length = 0
        else:
            if "," in length:
                length = length.split(",")[0].strip()
            if not (length.isascii() and length.isdigit()) or len(length) > 18:
                raise _ParseError(400, "invalid Content-Length")
            head.length = int(length)
        conn = headers.get("connection", "").lower()
        head.keep_alive = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
        head.expect_continue = headers.get("expect", "").lower() == "100-continue"
        if not target.isascii():
            raise _ParseError(400, "malformed request target")
        if target[:1] != "/":
            if target.startswith(("http://", "https://")):  # absolute-form
                slash = target.find("/", target.find("//") + 2)
                target = target[slash:] if slash > 0 else "/"
            else:
                raise _ParseError(400, "malformed request target")
        path, _, query = target.partition("?")
        if "%" in path:
            try:
                path = unquote(path, errors="strict")
            except UnicodeDecodeError:
                raise _ParseError(400, "malformed request target") from None
        head.path = path
        head.query = query
        return head

    # -- answering ------------------------------------------------------------------

    def _dispatch(self, head: _Head, body: bytes) -> None:
        request = Request(head.method, head.path, head.query, head.version, head.headers, body,
                          head.keep_alive)
        try:
            response = self._handler(request)
        except Exception:
            log.exception("unexpected error handling %s %s", head.method, head.path)
            response = json_error(500, "internal server error")
        self._write(response, head.keep_alive, head.version, head.method == "HEAD")
        if not head.keep_alive:
            self._close()

    def _write(self, r: Response, keep_alive: bool, version: str, head_only: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
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

    def _reject_body(self, head: _Head) -> None:
        """413 before reading an oversized body; then drain what the client still sends."""
        limit = self._limits.max_body_bytes
        self._count(413)
        self._write(json_error(413, f"request body of {head.length} bytes exceeds the limit of "
                                    f"{limit} bytes"), False, head.version)
        self._discarding = True
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
        if self._closed_at is None:
            self._closed_at = time.monotonic()
        if self.transport is not None:
            self.transport.close()

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
        if self._discarding:
            if now - self.last_activity > 2.0:
                self._close()
        elif self.request_started is not None or self._head is not None:
            started = self.request_started or self.last_activity
            if now - started > limits.request_timeout:
                self._fail(408, "request not received in time")
        elif now - self.last_activity > limits.idle_timeout:
            self._close()

    def shutdown(self) -> None:
        """Close now if idle; otherwise after the response in progress (server stopping)."""
        if self._head is None and not self._buf:
            self._close()
