"""Bundles downloaded over HTTP with Range requests (``bundle.url``): real agent processes,
a real Range-capable HTTP server in the test process (stdlib ``http.server``), real files.

The server can drop the connection mid-file, ignore Range, stall, answer 404/503, serve
wrong bytes or a shorter file, and require a bearer token; it logs every request's Range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from agent_support import BROKER, AgentProcess, Watcher, make_bundle

from edgeml.agent.chunkserver import ChunkServer
from edgeml.agent.http_fetch import HttpFetch
from edgeml.agent.protocol import BundleOffer, Command, ProtocolError
from edgeml.runtime.settings import BrokerSettings

CHUNK = 64 * 1024


class RangeServer:
    """Serves ``files`` (path -> bytes) on 127.0.0.1 with ``Range: bytes=N-`` support."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.log: list[dict[str, Any]] = []  # {"path", "range", "auth", "status"}
        self.drop_after: list[int] = []  # per request, in order: send this many bytes, then cut
        self.ignore_range = False
        self.stall_first = 0.0  # the first request waits this long before answering
        self.fail_first: list[int] = []  # statuses to answer first, in order
        self.token: str | None = None
        self.served = 0  # requests received
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _entry(self, req: BaseHTTPRequestHandler, status: int) -> None:
        with self.lock:
            self.log.append({"path": req.path, "range": req.headers.get("Range"),
                             "auth": req.headers.get("Authorization"), "status": status})

    def _plain(self, req: BaseHTTPRequestHandler, status: int) -> None:
        self._entry(req, status)
        req.send_response(status)
        req.send_header("Content-Length", "0")
        req.end_headers()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        with self.lock:
            first = self.served == 0
            self.served += 1
            stall = self.stall_first if first else 0.0
            fail = self.fail_first.pop(0) if self.fail_first else None
            drop = self.drop_after.pop(0) if self.drop_after else None
        if stall:
            time.sleep(stall)
        if self.token is not None and req.headers.get("Authorization") != f"Bearer {self.token}":
            self._plain(req, 401)
            return
        if fail is not None:
            self._plain(req, fail)
            return
        data = self.files.get(req.path)
        if data is None:
            self._plain(req, 404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", req.headers.get("Range") or "")
        if match and not self.ignore_range:
            start = int(match[1])
            if start >= len(data):
                self._entry(req, 416)
                req.send_response(416)
                req.send_header("Content-Range", f"bytes */{len(data)}")
                req.send_header("Content-Length", "0")
                req.end_headers()
                return
        status = 206 if start or (match and not self.ignore_range) else 200
        self._entry(req, status)
        req.send_response(status)
        if status == 206:
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        req.send_header("Content-Length", str(len(data) - start))
        req.end_headers()
        body = data[start:]
        if drop is not None:  # a connection that dies mid-file
            req.wfile.write(body[:drop])
            req.wfile.flush()
            req.close_connection = True
            return
        req.wfile.write(body)

    def ranges(self) -> list[str | None]:
        with self.lock:
            return [e["range"] for e in self.log]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("http-bundles")
    return {"v1": make_bundle(out, 1), "v2": make_bundle(out, 2, pad=300 * 1024)}  # 5 chunks


@pytest.fixture
def http() -> Iterator[RangeServer]:
    server = RangeServer()
    yield server
    server.close()


@pytest.fixture
def chunks(base: str) -> Iterator[ChunkServer]:
    """Sends the commands; also answers MQTT chunk requests (the tests check none came)."""
    cs = ChunkServer(BrokerSettings.from_url(BROKER), base).start()
    yield cs
    cs.stop()


def _deploy(chunks: ChunkServer, http: RangeServer, device: str, ident: str, bundle: Path,
            path: str = "/bundles/v2.edgeml", serve: bytes | None = None) -> BundleOffer:
    http.files[path] = bundle.read_bytes() if serve is None else serve
    offer = dataclasses.replace(chunks.offer(bundle, CHUNK), url=http.url + path)
    chunks.send("lab", device, Command(ident, "install", offer, soak_s=0.3))
    return offer


def test_dropped_connection_resumes_with_range_and_a_token(
        start_agent: Callable[..., AgentProcess], watcher: Watcher, chunks: ChunkServer,
        http: RangeServer, device: str, bundles: dict[str, Path], tmp_path: Path) -> None:
    """The server cuts the first answer after 150 KiB: the agent asks again from the last
    whole chunk it logged (128 KiB), with its bearer token, and installs the exact file."""
    http.token = "s3cret-token"
    http.drop_after = [150 * 1024]
    agent = start_agent("--allow-unsigned", bundle=bundles["v1"],
                        env={"EDGEML_AGENT_HTTP_TOKEN": "s3cret-token"})
    offer = _deploy(chunks, http, device, "dep-h1", bundles["v2"])
    done = watcher.wait(("committed", "failed", "rolled_back"), "dep-h1", 60)
    assert done["event"] == "committed", done
    assert done["serving"] == {"slot": "b", "name": "tiny", "version": 2, "sha256": offer.sha256}
    assert agent.model() == ("tiny", 2)
    assert http.ranges()[:2] == ["bytes=0-", f"bytes={2 * CHUNK}-"], http.log
    assert all(e["auth"] == "Bearer s3cret-token" and e["status"] in (200, 206)
               for e in http.log), http.log
    assert chunks.requests == 0  # nothing came over MQTT
    state = tmp_path / "state"
    assert (state / "slots/b/bundle.edgeml").read_bytes() == bundles["v2"].read_bytes()
    assert not list((state / "slots/b").glob("download.*"))


@pytest.mark.slow
def test_kill_9_mid_download_resumes_from_the_first_missing_chunk(
        start_agent: Callable[..., AgentProcess], watcher: Watcher, chunks: ChunkServer,
        http: RangeServer, device: str, bundles: dict[str, Path]) -> None:
    agent = start_agent("--allow-unsigned", bundle=bundles["v1"],
                        env={"EDGEML_AGENT_PAUSE_AT": "downloading:2"})
    _deploy(chunks, http, device, "dep-h2", bundles["v2"])
    agent.wait_line("agent: paused in downloading", 30)
    agent.kill()
    before = len(http.log)
    agent = start_agent("--allow-unsigned")
    resumed = watcher.wait("resumed", "dep-h2", 30)
    assert resumed["progress"]["have"] >= 2 and resumed["progress"]["count"] == 5
    done = watcher.wait(("committed", "failed", "rolled_back"), "dep-h2", 60)
    assert done["event"] == "committed", done
    assert agent.model() == ("tiny", 2)
    after = http.ranges()[before:]
    match = re.fullmatch(r"bytes=(\d+)-", after[0] or "")
    assert match is not None, after
    start = int(match[1])
    assert start == resumed["progress"]["have"] * CHUNK, (after, resumed)


def test_404_and_wrong_bytes_fail_with_the_old_model_serving(
        start_agent: Callable[..., AgentProcess], watcher: Watcher, chunks: ChunkServer,
        http: RangeServer, device: str, bundles: dict[str, Path], tmp_path: Path) -> None:
    agent = start_agent("--allow-unsigned", bundle=bundles["v1"])
    http.files["/other"] = b"x"
    offer = dataclasses.replace(chunks.offer(bundles["v2"], CHUNK), url=http.url + "/missing")
    chunks.send("lab", device, Command("dep-404", "install", offer, soak_s=0.3))
    done = watcher.wait(("committed", "failed", "rolled_back"), "dep-404", 60)
    assert done["event"] == "failed", done
    assert "HTTP 404" in done["reason"] and "/missing" in done["reason"], done["reason"]
    assert agent.model() == ("tiny", 1) and done["serving"]["version"] == 1

    good = bundles["v2"].read_bytes()
    wrong = good[:CHUNK] + bytes(b ^ 0x55 for b in good[CHUNK:CHUNK + 10]) + good[CHUNK + 10:]
    _deploy(chunks, http, device, "dep-wrong", bundles["v2"], serve=wrong)
    done = watcher.wait(("committed", "failed", "rolled_back"), "dep-wrong", 60)
    assert done["event"] == "failed", done
    assert "sha256 mismatch" in done["reason"], done["reason"]
    assert agent.model() == ("tiny", 1) and done["serving"]["version"] == 1
    state = tmp_path / "state"
    assert not list((state / "slots/b").glob("download.*"))
    assert not (state / "slots/b/bundle.edgeml").exists()


# -- the fetcher on its own (no agent): the other answers ---------------------------------------

DATA = bytes(range(256)) * 20  # 5120 bytes: chunks of 2048, 2048, 1024
OFFER = BundleOffer(hashlib.sha256(DATA).hexdigest(), len(DATA), 2048)


def _collect(fetch: HttpFetch, timeout: float = 20.0) -> tuple[bytes | None, list[Any]]:
    """Run ``fetch`` to its end; the bytes assembled by chunk index (None on error)."""
    got: dict[int, bytes] = {}
    events: list[Any] = []
    deadline = time.monotonic() + timeout
    fetch.start()
    try:
        while time.monotonic() < deadline:
            for event in fetch.poll(0.1):
                events.append(event[:2] if event[0] == "chunk" else event)
                if event[0] == "chunk":
                    got[event[1]] = event[2]
                elif event[0] == "error":
                    return None, events
                elif event[0] == "done":
                    return b"".join(got[i] for i in sorted(got)), events
        raise AssertionError(f"the fetch did not end: {events}")
    finally:
        fetch.stop()


def test_fetch_server_ignoring_range_restarts_from_zero(http: RangeServer) -> None:
    http.files["/b"] = DATA
    http.ignore_range = True
    http.drop_after = [3000]  # one whole chunk, then the cut
    data, events = _collect(HttpFetch(http.url + "/b", OFFER, 0, timeout=5))
    assert data == DATA
    assert http.ranges() == ["bytes=0-", "bytes=2048-"]
    assert [e["status"] for e in http.log] == [200, 200]
    assert [e[1] for e in events if e[0] == "chunk"] == [0, 0, 1, 2]  # chunk 0 came twice


def test_fetch_retries_503_and_timeouts_with_backoff(http: RangeServer) -> None:
    http.files["/b"] = DATA
    http.stall_first = 2.0  # longer than the timeout
    http.fail_first = [503, 503]
    data, events = _collect(HttpFetch(http.url + "/b", OFFER, 1, timeout=0.5, max_delay=1.0))
    assert data == DATA[2048:]  # from the first missing chunk (1)
    retries = [e[1] for e in events if e[0] == "retry"]
    assert retries[0] == "timed out" and retries.count("HTTP 503 Service Unavailable") >= 1, \
        retries
    assert set(http.ranges()) == {"bytes=2048-"}


def test_fetch_416_and_a_short_file_are_fatal(http: RangeServer) -> None:
    http.files["/short"] = DATA[:3000]
    data, events = _collect(HttpFetch(http.url + "/short", OFFER, 2, timeout=5))
    assert data is None and "HTTP 416" in events[-1][1], events
    data, events = _collect(HttpFetch(http.url + "/short", OFFER, 0, timeout=5))
    assert data is None and "has 3000 bytes, the bundle 5120" in events[-1][1], events
    http.token = "t"
    data, events = _collect(HttpFetch(http.url + "/short?k=secret", OFFER, 0, timeout=5))
    assert data is None and "HTTP 401" in events[-1][1], events
    assert "secret" not in events[-1][1]  # the query is not repeated in reasons


def test_offer_url_is_validated_and_round_trips() -> None:
    offer = dataclasses.replace(OFFER, url="https://files.example/b.edgeml?sig=1")
    cmd = Command("d", "install", offer)
    assert Command.decode(cmd.encode()).bundle == offer
    for url in ("ftp://h/x", "http:///nohost", "file:///etc/passwd", "http://h/a b", 7):
        with pytest.raises(ProtocolError, match=r"bundle\.url"):
            BundleOffer.from_dict({**OFFER.to_dict(), "url": url})
