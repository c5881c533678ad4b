"""HTTP/1.1 request parsing without sockets (RFC 9110/9112), standard library only.

:class:`RequestParser` is a sans-I/O state machine: ``feed(bytes)``, then call
``next_request()`` until it returns ``None`` (more bytes needed). It raises
:class:`ParseError` (with the status to answer) on anything a proxy could read differently:

- request line ``token SP vchar+ SP HTTP/1.x``; other versions 505; targets in origin or
  absolute form only;
- header names are tokens, no whitespace before the colon, no obsolete line folding; bare CR,
  bare LF, NUL or any other control character except HT in a value is a 400;
- ``Content-Length`` is digits; a list (``3, 40``) or repeated lines with different values are
  a 400 (identical repeats are folded to one value, RFC 9110 8.6); over the body limit 413;
- ``Transfer-Encoding: chunked`` bodies are decoded (chunk extensions are checked and ignored,
  trailer fields are checked and dropped); with ``Content-Length`` too, from an HTTP/1.0
  client, or with ``chunked`` not the final coding: 400; another coding before ``chunked``
  (``gzip, chunked``): 501; a chunked body over the limit: 413;
- HTTP/1.1 needs exactly one valid ``Host``; more than one is a 400 in any version.

Stray CRLFs before a request line are skipped (RFC 9112 2.2). ``continue_wanted`` turns true
once per request when an HTTP/1.1 client asked for ``100-continue`` and no body byte arrived.
The differential test (``tests/test_http_differential.py``) checks this parser against h11.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["ParseError", "Request", "RequestParser"]

_TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
_FIELD = re.compile(rf"({_TOKEN}):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
# every header line at once (one C call on the fast path): name ":" value CRLF, where a value
# holds no control character but HT (so no CR, LF or NUL)
_HEADER_BLOCK = re.compile(rf"(?:{_TOKEN}:[\t\x20-\x7e\x80-\xff]*\r\n)*")
_NAME_COLON = re.compile(r"[^:]*:")
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rf"([0-9A-Fa-f]{{1,16}})((?:;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*(?:{_TOKEN}|{_QUOTED}))?[ \t]*)*)")
_DIGITS = re.compile(r"[0-9]{1,18}")
MAX_CHUNK_LINE = 4096

# parser states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _DONE = range(7)


class ParseError(Exception):
    """The request cannot be read; answer ``status`` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """One complete request. ``headers`` has lower-case names (repeats joined with ``, ``)."""

    __slots__ = ("body", "expect_continue", "headers", "keep_alive", "method", "path", "query",
                 "target", "version")

    def __init__(self, method: str, path: str, query: str, version: str,
                 headers: dict[str, str], body: bytes, keep_alive: bool,
                 target: str = "", expect_continue: bool = False) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.target = target or (f"{path}?{query}" if query else path)
        self.expect_continue = expect_continue


class RequestParser:
    """Feed bytes in, take complete :class:`Request` objects out, in order."""

    __slots__ = ("_buf", "_chunk_left", "_have", "_head", "_max_body", "_max_header",
                 "_max_headers", "_parts", "_scan", "_state", "continue_wanted")

    def __init__(self, max_header_bytes: int = 16 * 1024, max_headers: int = 100,
                 max_body_bytes: int = 8 * 1024 * 1024) -> None:
        self._max_header = max_header_bytes
        self._max_headers = max_headers
        self._max_body = max_body_bytes
        self._buf = b""
        self._state = _HEAD
        self._head: Request | None = None
        self._parts: list[bytes] = []
        self._have = 0  # body bytes received for the current request
        self._chunk_left = 0
        self._scan = 0  # where to resume looking for the end of a header block or line
        self.continue_wanted = False

    @property
    def buffered(self) -> int:
        """Request bytes held in memory (unparsed input plus the body received so far)."""
        return len(self._buf) + self._have

    @property
    def in_request(self) -> bool:
        """True once a byte of a request arrived, until the request is complete."""
        return self._state != _HEAD or bool(self._buf)

    @property
    def body_started(self) -> bool:
        return self._have > 0

    def feed(self, data: bytes) -> None:
        if self._state == _DONE or not data:
            return
        self._buf = self._buf + data if self._buf else data

    def close(self) -> None:
        """Stop parsing (after a request that ends the connection); drop what is buffered."""
        self._state = _DONE
        self._buf = b""
        self._parts = []
        self._have = 0

    def next_request(self) -> Request | None:
        """The next complete request, or None until more bytes arrive."""
        while True:
            state = self._state
            if state == _HEAD:
                if not self._read_head():
                    return None
            elif state == _LENGTH:
                return self._read_length()
            elif state == _DONE:
                return None
            else:
                return self._read_chunked()

    # -- header block ------------------------------------------------------------------

    def _read_head(self) -> bool:
        buf = self._buf
        if buf[:1] in (b"\r", b"\n"):  # stray CRLF between pipelined requests (RFC 9112 2.2)
            stripped = buf.lstrip(b"\r\n")
            skipped = buf[: len(buf) - len(stripped)].replace(b"\r\n", b"")
            if skipped == b"\r" and not stripped:
                return False  # half of a CRLF: wait for the LF
            if skipped:
                raise ParseError(400, "bare CR or LF before the request line")
            buf = self._buf = stripped
        if not buf:
            return False
        end = buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if len(buf) > self._max_header:
                raise ParseError(431, "request header block too large")
            if _bare_cr_or_lf(buf):
                raise ParseError(400, "bare CR or LF in the request header block")
            self._scan = max(0, len(buf) - 3)
            return False
        self._scan = 0
        if end > self._max_header:
            raise ParseError(431, "request header block too large")
        head = self._parse_head(buf[:end].decode("latin-1"))
        self._buf = buf[end + 4:]
        self._head = head
        return True

    def _parse_head(self, text: str) -> Request:
        first = text.find("\r\n")
        match = _REQUEST_LINE.fullmatch(text if first < 0 else text[:first])
        if match is None:
            raise ParseError(400, _head_problem(text, "malformed request line"))
        block = "" if first < 0 else text[first + 2:] + "\r\n"
        if block and _HEADER_BLOCK.fullmatch(block) is None:
            raise ParseError(400, _head_problem(text, "malformed header line"))
        method, target, version = match.groups()
        if version != "1.1" and version != "1.0":
            raise ParseError(505, f"HTTP version {version!r} is not supported")
        version = "HTTP/" + version
        lines = block.split("\r\n")
        del lines[-1]
        if len(lines) > self._max_headers:
            raise ParseError(431, "too many request headers")
        headers: dict[str, str] = {}
        lengths: list[str] = []
        for line in lines:
            name, _, value = line.partition(":")
            value = value.strip(" \t")
            key = name.lower()
            if key == "content-length":
                lengths += value.split(",")
            old = headers.get(key)
            if old is not None:
                if key == "host":
                    raise ParseError(400, "more than one Host header")
                value = f"{old}, {value}"
            headers[key] = value
        host = headers.get("host")
        if host is None:
            if version == "HTTP/1.1":
                raise ParseError(400, "missing Host header (required in HTTP/1.1)")
        elif _HOST.fullmatch(host) is None:
            raise ParseError(400, "invalid Host header")
        conn = headers.get("connection")
        if conn is None:
            keep_alive = version == "HTTP/1.1"
        else:
            tokens = {t.strip(" \t").lower() for t in conn.split(",")}
            keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
        expect = version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue"
        path, query = _target(method, target)
        head = Request(method, path, query, version, headers, b"", keep_alive, target, expect)
        te = headers.get("transfer-encoding")
        if te is not None:
            self._check_transfer_encoding(te, version, bool(lengths))
            headers["transfer-encoding"] = "chunked"
            self._state = _CHUNK_SIZE
            self._chunk_left = 0
        elif lengths:
            length = lengths[0].strip(" \t")
            if len(lengths) > 1 and {v.strip(" \t") for v in lengths} != {length}:
                raise ParseError(400, "conflicting Content-Length values")
            if _DIGITS.fullmatch(length) is None:
                raise ParseError(400, "invalid Content-Length")
            headers["content-length"] = length
            self._chunk_left = int(length)
            if self._chunk_left > self._max_body:
                raise ParseError(413, f"request body of {length} bytes exceeds the limit of "
                                      f"{self._max_body} bytes")
            self._state = _LENGTH
        else:
            self._chunk_left = 0
            self._state = _LENGTH
        self.continue_wanted = expect
        return head

    @staticmethod
    def _check_transfer_encoding(te: str, version: str, has_length: bool) -> None:
        if has_length:
            raise ParseError(400, "both Transfer-Encoding and Content-Length")
        if version != "HTTP/1.1":
            raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = [c.strip(" \t").lower() for c in te.split(",")]
        if codings == ["chunked"]:
            return
        if codings[-1] != "chunked" or "chunked" in codings[:-1]:
            raise ParseError(400, "chunked must be the final transfer coding, applied once")
        raise ParseError(501, f"transfer coding {codings[0][:40]!r} is not supported "
                              "(only chunked)")

    # -- bodies ------------------------------------------------------------------------

    def _finish(self, body: bytes) -> Request:
        head = self._head
        assert head is not None
        head.body = body
        self._head = None
        self._parts = []
        self._have = 0
        self._state = _HEAD if head.keep_alive else _DONE
        self.continue_wanted = False
        if not head.keep_alive:
            self._buf = b""
        return head

    def _read_length(self) -> Request | None:
        need = self._chunk_left - self._have
        buf = self._buf
        if len(buf) >= need:
            if self._parts:
                self._parts.append(buf[:need])
                body = b"".join(self._parts)
            else:
                body = buf[:need] if need < len(buf) else buf
            self._buf = buf[need:]
            return self._finish(body)
        if buf:
            self._parts.append(buf)
            self._have += len(buf)
            self._buf = b""
            self.continue_wanted = False
        return None

    def _read_chunked(self) -> Request | None:
        """Advance through chunk-size lines, chunk data and the trailer section."""
        while True:
            state = self._state
            buf = self._buf
            if state == _CHUNK_DATA:
                if not buf:
                    return None
                take = buf[: self._chunk_left]
                self._parts.append(take)
                self._have += len(take)
                self._chunk_left -= len(take)
                self._buf = buf[len(take):]
                self.continue_wanted = False
                if self._chunk_left:
                    return None
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    if buf and buf != b"\r":
                        raise ParseError(400, "chunk data not followed by CRLF")
                    return None
                if buf[:2] != b"\r\n":
                    raise ParseError(400, "chunk data not followed by CRLF")
                self._buf = buf[2:]
                self._state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    self._check_partial_line(buf, MAX_CHUNK_LINE, "chunk size line")
                    return None
                line = buf[:end].decode("latin-1")
                match = _CHUNK_LINE.fullmatch(line) if end <= MAX_CHUNK_LINE else None
                if match is None:
                    raise ParseError(400, "malformed chunk size line")
                size = int(match.group(1), 16)
                self._buf = buf[end + 2:]
                if size == 0:
                    self._state = _TRAILER
                    continue
                if self._have + size > self._max_body:
                    raise ParseError(413, f"chunked request body exceeds the limit of "
                                          f"{self._max_body} bytes")
                self._chunk_left = size
                self._state = _CHUNK_DATA
            else:  # _TRAILER
                if buf[:2] == b"\r\n":
                    self._buf = buf[2:]
                    return self._finish(b"".join(self._parts))
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    self._check_partial_line(buf, self._max_header, "trailer section")
                    return None
                if end > self._max_header:
                    raise ParseError(431, "trailer section too large")
                self._check_trailers(buf[:end].decode("latin-1"))
                self._buf = buf[end + 4:]
                return self._finish(b"".join(self._parts))

    @staticmethod
    def _check_partial_line(buf: bytes, limit: int, what: str) -> None:
        if len(buf) > limit:
            raise ParseError(431 if what == "trailer section" else 400, f"{what} too long")
        if _bare_cr_or_lf(buf):
            raise ParseError(400, f"bare CR or LF in the {what}")

    def _check_trailers(self, text: str) -> None:
        if _HEADER_BLOCK.fullmatch(text + "\r\n") is None:
            problem = _head_problem("-\r\n" + text, "malformed trailer field")
            raise ParseError(400, problem.replace("header", "trailer"))
        if text.count("\r\n") + 1 > self._max_headers:
            raise ParseError(431, "too many trailer fields")


def _bare_cr_or_lf(buf: bytes) -> bool:
    """A CR or LF that is not part of a CRLF (a CR at the very end may still get its LF)."""
    return buf.count(b"\n") != buf.count(b"\r\n") or b"\r" in buf.replace(b"\r\n", b"")[:-1]


def _head_problem(text: str, default: str) -> str:
    """Why a header block was refused, for the 400's message (the slow path)."""
    crlf = text.count("\r\n")
    if text.count("\r") != crlf or text.count("\n") != crlf:
        return "bare CR or LF in the request header block"
    if "\x00" in text:
        return "NUL in the request header block"
    for line in text.split("\r\n")[1:]:
        if _FIELD.fullmatch(line) is None:
            return _field_problem(line)
    return default


def _field_problem(line: str) -> str:
    """Why a header line did not match, for the 400's message."""
    if line[:1] in (" ", "\t"):
        return "obsolete line folding in the request headers"
    if _NAME_COLON.match(line) is None:
        return "malformed header line (no colon)"
    name = line.partition(":")[0]
    if not name or name[-1] in " \t":
        return "malformed header line (whitespace before the colon)"
    if re.fullmatch(_TOKEN, name) is None:
        return "header name is not a token"
    return "invalid character in a header value"


def _target(method: str, target: str) -> tuple[str, str]:
    """(decoded path, raw query) of an origin-form or absolute-form request target."""
    if target[0] == "/" and "%" not in target and "#" not in target:  # the usual case
        path, _, query = target.partition("?")
        return path, query
    if target[:1] != "/":
        lower = target[:8].lower()
        if lower.startswith(("http://", "https://")):  # absolute-form
            slash = target.find("/", target.find("//") + 2)
            target = target[slash:] if slash > 0 else "/"
        else:
            raise ParseError(400, "malformed request target")
    path, _, query = target.partition("?")
    if "#" in query or "#" in path:
        raise ParseError(400, "malformed request target (fragment)")
    if "%" in path:
        try:
            path = unquote(path, errors="strict")
        except UnicodeDecodeError:
            raise ParseError(400, "malformed request target") from None
    return path, query
