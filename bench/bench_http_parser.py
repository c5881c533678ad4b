"""HTTP request parsing: edgeml's stdlib parser against httptools (llhttp) and h11.

Each parser turns the same raw bytes into what the server needs (method, target, headers as a
dict, the whole body); for httptools that is its callbacks collecting them, as uvicorn does.
Cases: a typical OIP inference request (Content-Length, ~400 bytes), the same as a chunked
body, and a keep-alive pipeline of 8 requests. Prints the median time per request over
``--repeat`` rounds and each parser's ratio to edgeml's. Run::

    .venv/bin/python bench/bench_http_parser.py [--repeat 15] [--number 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
from collections.abc import Callable
from typing import Any

from edgeml.runtime.http_parser import RequestParser

BODY = json.dumps({"id": "42", "inputs": [
    {"name": "island", "shape": [1, 1], "datatype": "BYTES", "data": ["Dream"]},
    {"name": "bill_length_mm", "shape": [1, 1], "datatype": "FP32", "data": [41.5]},
    {"name": "flipper_length_mm", "shape": [1, 1], "datatype": "FP32", "data": [201.0]},
]}).encode()
HEAD = (b"POST /v2/models/penguins/infer HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"User-Agent: python-requests/2.32\r\nAccept: */*\r\nConnection: keep-alive\r\n"
        b"Content-Type: application/json\r\n")
LENGTH = HEAD + f"Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(
    f"{len(BODY[i:i + 128]):x}\r\n".encode() + BODY[i:i + 128] + b"\r\n"
    for i in range(0, len(BODY), 128)) + b"0\r\n\r\n"
CASES = {"content-length": (LENGTH, 1), "chunked": (CHUNKED, 1), "pipeline x8": (LENGTH * 8, 8)}


def edgeml(data: bytes) -> list[Any]:
    parser = RequestParser()
    parser.feed(data)
    out = []
    while (r := parser.next_request()) is not None:
        out.append((r.method, r.target, r.headers, r.body))
    return out


def make_httptools() -> Callable[[bytes], list[Any]] | None:
    try:
        import httptools
    except ImportError:
        return None

    class Collect:
        __slots__ = ("body", "headers", "out", "target")

        def __init__(self) -> None:
            self.out: list[Any] = []
            self.headers: dict[str, str] = {}
            self.body: list[bytes] = []
            self.target = b""

        def on_url(self, url: bytes) -> None:
            self.target += url

        def on_header(self, name: bytes, value: bytes) -> None:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            self.out.append((self.target, self.headers, b"".join(self.body)))
            self.headers, self.body, self.target = {}, [], b""

    def parse(data: bytes) -> list[Any]:
        collect = Collect()
        parser = httptools.HttpRequestParser(collect)
        parser.feed_data(data)
        return [(parser.get_method().decode(), t.decode("latin-1"), h, b) for t, h, b in collect.out]

    return parse


def make_h11() -> Callable[[bytes], list[Any]] | None:
    try:
        import h11
    except ImportError:
        return None

    def parse(data: bytes) -> list[Any]:
        out = []
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        head: Any = None
        body: list[bytes] = []
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                head, body = event, []
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                headers: dict[str, str] = {}
                for k, v in head.headers:
                    key, text = k.decode("latin-1"), v.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                out.append((head.method.decode(), head.target.decode(), headers, b"".join(body)))
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
            else:
                return out

    return parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--number", type=int, default=2000)
    args = ap.parse_args()
    parsers = {"edgeml": edgeml, "httptools": make_httptools(), "h11": make_h11()}
    print(f"{'case':<16}{'parser':<11}{'median us/request':>18}{'vs edgeml':>11}")
    for case, (data, n) in CASES.items():
        reference = edgeml(data)
        assert len(reference) == n and reference[0][3] == BODY
        base = 0.0
        for name, parse in parsers.items():
            if parse is None:
                print(f"{case:<16}{name:<11}{'not installed':>18}")
                continue
            got = parse(data)
            assert [(m, t, h, b) for m, t, h, b in got] == reference, name  # same answer
            number = args.number if name != "h11" else max(1, args.number // 10)
            times = timeit.repeat(lambda p=parse, d=data: p(d), number=number, repeat=args.repeat)
            us = statistics.median(times) / number / n * 1e6
            base = base or us
            print(f"{case:<16}{name:<11}{us:>18.2f}{us / base:>10.2f}x")


if __name__ == "__main__":
    main()
