"""edgeml's HTTP request parser against h11, on the same generated raw bytes (hypothesis).

Each case is one to three pipelined requests built from valid parts and then, often, made
hostile: conflicting or listed Content-Length, Transfer-Encoding with Content-Length or odd
codings, chunk sizes and extensions, bare CR/LF, NUL and other control bytes, obsolete line
folding, whitespace before the colon, non-token names, missing or repeated Host, bad versions
and targets, trailers. The property: every request edgeml accepts, h11 accepts too, at the
same position in the stream and with the same method, target, headers and body; so a proxy
that frames requests like h11 can never make edgeml see a request it did not see. edgeml is
also fed the same bytes split into random pieces and must not change its mind.

One deliberate difference: RFC 9112 2.2 lets a server skip empty lines before a request line
and edgeml does, h11 refuses them; the h11 side gets those empty lines removed.
"""

from __future__ import annotations

import itertools
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgeml.runtime.http_parser import ParseError, RequestParser

MAX_BODY = 4096
EXAMPLES = int(__import__("os").environ.get("FUZZ_EXAMPLES", "400"))
DIFF = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

Parsed = tuple[str, str, dict[str, str], bytes]


# -- the two parsers ------------------------------------------------------------------------


def edgeml_parse(pieces: list[bytes]) -> tuple[list[Parsed], bool]:
    """(accepted requests, whether edgeml refused the rest)."""
    parser = RequestParser(max_header_bytes=16 * 1024, max_headers=100, max_body_bytes=MAX_BODY)
    out: list[Parsed] = []
    try:
        for piece in pieces:
            parser.feed(piece)
            while (r := parser.next_request()) is not None:
                out.append((r.method, r.target, dict(r.headers), r.body))
                if not r.keep_alive:
                    return out, False
    except ParseError:
        return out, True
    return out, False


def _strip_empty_lines(data: bytes) -> bytes:
    while data[:2] == b"\r\n":
        data = data[2:]
    return data


def _h11_with(data: bytes) -> h11.Connection:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
    if data:  # (receive_data(b"") would mean the client closed)
        conn.receive_data(data)
    return conn


def _keep_alive(head: Any, conn: h11.Connection) -> bool:
    """h11's verdict for HTTP/1.1; h11 closes every HTTP/1.0 connection, so for those the
    RFC 9112 C.2.2 rule (``Connection: keep-alive``) decides whether parsing goes on."""
    if head.http_version == b"1.1":
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE
    tokens = {t.strip().lower() for name, value in head.headers if name == b"connection"
              for t in value.split(b",")}
    return b"keep-alive" in tokens


def h11_parse(data: bytes) -> tuple[list[Parsed], bool]:
    """(complete requests h11 read, whether h11 refused the stream)."""
    out: list[Parsed] = []
    conn = _h11_with(_strip_empty_lines(data))
    head: Any = None
    body = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or \
                    isinstance(event, h11.ConnectionClosed):
                return out, False
            if isinstance(event, h11.Request):
                head, body = event, b""
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                headers: dict[str, str] = {}
                for name, value in head.headers:
                    key, text = name.decode("latin-1"), value.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                out.append((head.method.decode(), head.target.decode("latin-1"), headers, body))
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if not _keep_alive(head, conn):
                    return out, False
                conn = _h11_with(_strip_empty_lines(bytes(conn.trailing_data[0])))
    except h11.ProtocolError:
        return out, True


def check(data: bytes, cuts: list[int]) -> tuple[list[Parsed], bool]:
    ours, refused = edgeml_parse([data])
    theirs, _ = h11_parse(data)
    assert len(ours) <= len(theirs), (data, ours, theirs)
    assert ours == theirs[: len(ours)], (data, ours, theirs)
    # the same bytes in pieces: the same requests and the same verdict
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert edgeml_parse(pieces) == (ours, refused), (data, bounds)
    return ours, refused


# -- generated requests -----------------------------------------------------------------------

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~",
                min_size=1, max_size=12)
VALUE_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=20)
HOSTILE_BYTES = st.sampled_from([b"\r", b"\n", b"\x00", b"\x01", b"\x7f", b"\x0b", b"\x0c", b"\t",
                                 b" ", b"\xff", b"\r\n", b"\r\n ", b",", b":", b";", b'"'])
METHODS = st.one_of(st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS", "DELETE"]), TOKEN)
TARGETS = st.one_of(
    st.sampled_from(["/", "/v1/predict", "/v2/models/toy/infer?x=1&y=%20", "/a%2Fb",
                     "http://edge:8080/v2", "https://x/y?z", "*", "/%ff", "/a#frag", "//x",
                     "HTTP://X/y"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1,
            max_size=15).map(lambda t: "/" + t),
)
VERSIONS = st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0"] * 2 + ["HTTP/2.0", "HTTP/1.2",
                                                                   "http/1.1", "HTTP/1", "HTTP/11"])


@st.composite
def framing(draw: st.DrawFn, body: bytes, clean: bool) -> tuple[list[tuple[str, str]], bytes]:
    """Headers that frame ``body`` and the bytes on the wire: valid when ``clean``."""
    n = len(body)

    def pick(valid: list[Any], hostile: list[Any]) -> Any:
        return draw(st.sampled_from(valid if clean else valid + hostile))

    kind = pick(["length", "length", "chunked", "chunked", "none", "same-twice"],
                ["list", "two-lengths", "te-and-cl", "te-odd", "short"])
    if kind == "length":
        return [("Content-Length", str(n))], body
    if kind == "none":
        return [], b""
    if kind == "list":
        return [("Content-Length", f"{n}, {draw(st.sampled_from([n, n + 3, 40]))}")], body
    if kind == "two-lengths":
        return [("Content-Length", str(n)), ("Content-Length", str(draw(st.integers(0, 60))))], body
    if kind == "same-twice":
        return [("Content-Length", str(n)), ("content-length", f" {n}")], body
    if kind == "short":  # Content-Length smaller than what is sent: the rest is a "request"
        return [("Content-Length", str(draw(st.integers(0, max(0, n - 1)))))], body
    sizes = draw(st.lists(st.integers(1, 9), max_size=4))
    wire, at = b"", 0
    for size in sizes:
        part = body[at:at + size]
        if not part:
            break
        at += len(part)
        ext = pick(["", "", ";a", ";a=b", ';a="q d"', ";a ; b=c"], [" ;a", ";", ";a=", "; a = b"])
        size_text = pick([f"{len(part):x}", f"{len(part):X}", f"0{len(part):x}"],
                         [f"{len(part):x} ", f"0x{len(part):x}", f"+{len(part):x}"])
        wire += f"{size_text}{ext}".encode() + pick([b"\r\n"], [b"\n"]) + part
        wire += pick([b"\r\n"], [b"\n", b"", b"xx", b"\r"])
    trailer = pick([b"", b"", b"X-T: 1\r\n"], [b"X-T 1\r\n", b"X-T: a\nb\r\n", b" X: 1\r\n"])
    wire += b"0" + pick([b"", b";z"], [b" ;z"]) + b"\r\n" + trailer + b"\r\n"
    te = pick(["chunked", "chunked", "Chunked"], ["gzip, chunked", "chunked, chunked", "gzip",
                                                  "chunked, gzip", "identity", ""])
    headers = [("Transfer-Encoding", te)]
    if kind == "te-and-cl":
        headers.append(("Content-Length", str(len(wire))))
    elif kind == "te-odd":
        headers.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "gzip"]))))
    return headers, wire


@st.composite
def raw_request(draw: st.DrawFn) -> bytes:
    clean = draw(st.booleans())  # half valid requests, half with something hostile
    if clean:
        method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT"]))
        target = draw(st.sampled_from(["/", "/v1/predict", "/v2/models/toy/infer?x=1&y=%20",
                                       "http://edge:8080/v2", "/a%2Fb"]))
        version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
    else:
        method, target, version = draw(METHODS), draw(TARGETS), draw(VERSIONS)
    body = draw(st.binary(max_size=40))
    headers, wire_body = draw(framing(body, clean and version == "HTTP/1.1"))
    host = "one" if clean else draw(st.sampled_from(["one", "none", "two", "bad", "empty"]))
    if host == "one":
        headers.insert(draw(st.integers(0, len(headers))), ("Host", draw(st.sampled_from(
            ["edge", "edge:8080", "127.0.0.1", "[::1]:80", "EDGE.local"]))))
    elif host == "two":
        headers += [("Host", "a"), ("Host", "b")]
    elif host == "bad":
        headers.append(("Host", draw(st.sampled_from(["a b", "a/b", "a@b", "[zz]"]))))
    elif host == "empty":
        headers.append(("Host", ""))
    for _ in range(draw(st.integers(0, 3))):
        headers.insert(draw(st.integers(0, len(headers))), (draw(TOKEN), draw(VALUE_TEXT)))
    if draw(st.booleans()):
        headers.append(("Connection", draw(st.sampled_from(["close", "keep-alive", "Close",
                                                            "te, close", "closed"]))))
    if draw(st.integers(0, 9)) == 0:
        headers.append(("Expect", "100-continue"))
    lines = [f"{method} {target} {version}".encode()]
    lines += [f"{k}: {v}".encode() for k, v in headers]
    wire = b"\r\n".join(lines) + b"\r\n\r\n"
    if not clean and draw(st.booleans()):  # one hostile mutation of the head
        at = draw(st.integers(0, len(wire) - 1))
        how = draw(st.sampled_from(["insert", "replace", "name-space", "fold", "lf"]))
        if how == "insert":
            wire = wire[:at] + draw(HOSTILE_BYTES) + wire[at:]
        elif how == "replace":
            wire = wire[:at] + draw(HOSTILE_BYTES) + wire[at + 1:]
        elif how == "name-space":
            wire = wire.replace(b": ", b" : ", 1)
        elif how == "fold":  # obsolete line folding after the first header line
            second = wire.find(b"\r\n", wire.find(b"\r\n") + 2)
            wire = wire[:second] + b"\r\n folded" + wire[second:]
        else:
            wire = wire.replace(b"\r\n", b"\n", draw(st.integers(1, 3)))
    return wire + wire_body


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    parts = draw(st.lists(raw_request(), min_size=1, max_size=3))
    glue = draw(st.sampled_from([b"", b"", b"\r\n"]))
    data = glue.join(parts)
    return data, draw(st.lists(st.integers(0, 10_000), max_size=6))


# -- tests ------------------------------------------------------------------------------------


@DIFF
@given(case=streams())
@example(case=(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 40\r\n\r\nabcGET / HTTP/1.1\r\n"
               b"Host: a\r\n\r\n", []))
@example(case=(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4"
               b"\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", [5, 50]))
@example(case=(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n", []))
def test_edgeml_accepts_only_what_h11_accepts_and_reads_it_the_same(
    case: tuple[bytes, list[int]]
) -> None:
    check(*case)


def test_the_generator_makes_both_kinds_of_request() -> None:
    """The property is not vacuous: valid streams parse, hostile ones are refused."""
    accepted = refused = chunked = 0

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(case=streams())
    def count(case: tuple[bytes, list[int]]) -> None:
        nonlocal accepted, refused, chunked
        ours, was_refused = check(*case)
        accepted += len(ours)
        refused += was_refused
        chunked += sum(1 for r in ours if r[2].get("transfer-encoding") == "chunked")

    count()
    assert accepted > 100 and refused > 50 and chunked > 10, (accepted, refused, chunked)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3;x=\"a b\"\r\nabc\r\n1\r\nd\r\n0\r\nX-T: 1\r\n\r\n",
         [("POST", "/p", {"host": "a", "transfer-encoding": "chunked"}, b"abcd")]),
        (b"GET /x?y HTTP/1.0\r\nConnection: keep-alive\r\n\r\nPOST / HTTP/1.1\r\nHost: h\r\n"
         b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
         [("GET", "/x?y", {"connection": "keep-alive"}, b""),
          ("POST", "/", {"host": "h", "content-length": "2"}, b"hi")]),
    ],
)
def test_known_requests_parse_identically(data: bytes, expected: list[Parsed]) -> None:
    assert edgeml_parse([data]) == (expected, False)
    assert h11_parse(data)[0] == expected


def test_h11_refusals_edgeml_shares() -> None:
    """Smuggling shapes from the issue: refused by both."""
    for data in (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 40\r\n\r\nabc",
                 b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
                 b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
                 b"GET / HTTP/1.1\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"):
        assert edgeml_parse([data]) == ([], True), data
        assert h11_parse(data) == ([], True), data
