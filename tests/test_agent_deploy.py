"""``edgeml agent`` end to end: real agent processes, the real broker, real bundles and keys.

Each test has its own base topic; the chunk server (edgeml.agent.chunkserver) runs in the
test process and answers the agent's chunk requests from bundle files.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from agent_support import (
    ROW,
    AgentProcess,
    Watcher,
    make_bundle,
)
from paho.mqtt.enums import CallbackAPIVersion

from edgeml.agent.chunkserver import ChunkServer
from edgeml.agent.protocol import CHUNK_HEADER, Command, Gates, encode_chunk

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgeml.package.keys import generate_keypair

    out = tmp_path_factory.mktemp("agent-bundles")
    key, pub = generate_keypair(out / "keys")
    other_key, _other_pub = generate_keypair(out / "other-keys")
    return {
        "v1": make_bundle(out, 1),
        "v2": make_bundle(out, 2, pad=300 * 1024),  # 5 chunks of 64 KiB
        "v1-signed": make_bundle(out, 1, sign_key=key),
        "v2-signed": make_bundle(out, 2, pad=100 * 1024, sign_key=key),
        "v2-other-key": make_bundle(out, 2, pad=100 * 1024, sign_key=other_key),
        "v2-arm": make_bundle(out, 2, arch="aarch64", target="rpi4"),
        "pub": pub,
    }


def test_transfer_install_commit(start_agent: Callable[..., AgentProcess], watcher: Watcher,
                                 server: ChunkServer, device: str, bundles: dict[str, Path],
                                 tmp_path: Path) -> None:
    agent = start_agent("--allow-unsigned", bundle=bundles["v1"])
    assert agent.model() == ("tiny", 1)
    offer = server.offer(bundles["v2"], CHUNK)
    assert offer.count == 5
    server.deploy("lab", device, "dep-1", offer, soak_s=1.0)
    done = watcher.wait(("committed", "failed", "rolled_back"), "dep-1", 60)
    assert done["event"] == "committed", done
    assert watcher.events("dep-1") == ["received", "verified", "switched", "committed"]
    assert done["serving"] == {"slot": "b", "name": "tiny", "version": 2, "sha256": offer.sha256}
    assert agent.model() == ("tiny", 2)
    # what is on disk: slot b holds exactly the offered file, marked good; a still holds v1
    state = tmp_path / "state"
    assert json.loads((state / "current").read_text()) == {"slot": "b", "previous": "a"}
    assert (state / "slots/b/bundle.edgeml").read_bytes() == bundles["v2"].read_bytes()
    assert json.loads((state / "slots/b/slot.json").read_text())["status"] == "good"
    assert (state / "slots/a/bundle.edgeml").read_bytes() == bundles["v1"].read_bytes()
    assert not list((state / "slots/b").glob("download.*"))
    # $info was republished with the new model
    deadline = time.monotonic() + 10
    while not any(i.get("model", {}).get("version") == 2 for i in watcher.infos):
        assert time.monotonic() < deadline, watcher.infos
        time.sleep(0.1)
    # the same command again: answered with the same result, nothing reinstalled
    server.deploy("lab", device, "dep-1", offer, soak_s=1.0)
    deadline = time.monotonic() + 10
    while watcher.events("dep-1").count("committed") < 2:
        assert time.monotonic() < deadline, watcher.events("dep-1")
        time.sleep(0.1)
    assert "received" not in watcher.events("dep-1")[4:]


def test_resume_after_restart_mid_transfer(start_agent: Callable[..., AgentProcess],
                                           watcher: Watcher, server: ChunkServer, device: str,
                                           bundles: dict[str, Path], tmp_path: Path) -> None:
    """The agent stops (SIGTERM) after 2 of 5 chunks; restarted, it fetches only the rest."""
    asked: list[int] = []

    def record(_device: str, chunks: list[tuple[int, bytes]]) -> list[bytes]:
        asked.extend(i for i, _ in chunks)
        return [p for _, p in chunks]

    server.mangle = record
    state = tmp_path / "state"
    agent = start_agent("--allow-unsigned", "--window", "1", bundle=bundles["v1"], state=state,
                        env={"EDGEML_AGENT_PAUSE_AT": "downloading:2"})
    server.deploy("lab", device, "dep-r", server.offer(bundles["v2"], CHUNK), soak_s=0.5)
    agent.wait_line("agent: paused in downloading", 30)
    agent.kill()
    before = len(asked)
    agent = start_agent("--allow-unsigned", "--window", "1", state=state)
    resumed = watcher.wait("resumed", "dep-r", 30)
    assert resumed["progress"]["have"] >= 2 and resumed["progress"]["count"] == 5
    assert watcher.wait(("committed", "failed"), "dep-r", 60)["event"] == "committed"
    assert agent.model() == ("tiny", 2)
    assert 0 not in asked[before:] and 1 not in asked[before:], asked  # not fetched again


def test_disconnect_mid_transfer(start_agent: Callable[..., AgentProcess], watcher: Watcher,
                                 server: ChunkServer, device: str, bundles: dict[str, Path],
                                 tmp_path: Path) -> None:
    """The broker drops the agent's deploy connection after 2 chunks (another client takes
    over its client id) and the chunks asked for then are lost: the agent reconnects and
    asks again for what is missing."""
    asked: list[int] = []
    kicked = threading.Event()

    def kick() -> None:
        thief = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgeml-lab-{device}-deploy",
                            protocol=mqtt.MQTTv5)
        thief.connect("127.0.0.1", 1883, clean_start=False)
        thief.loop_start()
        time.sleep(0.5)
        thief.disconnect()
        thief.loop_stop()
        kicked.set()

    def cut(_device: str, chunks: list[tuple[int, bytes]]) -> list[bytes]:
        asked.extend(i for i, _ in chunks)
        if any(i >= 2 for i, _ in chunks) and not kicked.is_set():
            if len(asked) - len(chunks) < 3:  # the first request past chunk 1: cut here
                threading.Thread(target=kick).start()
            return []  # lost with the connection
        return [p for _, p in chunks]

    server.mangle = cut
    agent = start_agent("--allow-unsigned", "--window", "1", bundle=bundles["v1"])
    offer = server.offer(bundles["v2"], CHUNK)
    server.deploy("lab", device, "dep-d", offer, soak_s=0.2)
    done = watcher.wait(("committed", "failed"), "dep-d", 60)
    assert done["event"] == "committed", done
    assert kicked.is_set()
    assert asked.count(2) >= 2  # asked again after the reconnect
    assert asked.count(0) == 1 and asked.count(1) == 1  # what it had was not fetched again
    assert (tmp_path / "state/slots/b/bundle.edgeml").read_bytes() == bundles["v2"].read_bytes()
    assert agent.model() == ("tiny", 2)


def _once(index: int, change: Callable[[bytes], bytes]) -> Callable[..., list[bytes]]:
    done: set[int] = set()

    def mangle(_device: str, chunks: list[tuple[int, bytes]]) -> list[bytes]:
        out = []
        for i, payload in chunks:
            if i == index and i not in done:
                done.add(i)
                payload = change(payload)
            out.append(payload)
        return out
    return mangle


def _flip(payload: bytes) -> bytes:
    return payload[:-1] + bytes([payload[-1] ^ 0xFF])


MANGLES: dict[str, Callable[..., list[bytes]]] = {
    "truncated": _once(1, lambda p: p[: len(p) // 2]),
    "header-only-truncated": _once(2, lambda p: p[: CHUNK_HEADER.size - 10]),
    "corrupted": _once(1, _flip),
    "padded": _once(3, lambda p: p + b"\0" * 16),
    "duplicated": lambda device, chunks: [p for _, p in chunks for _ in range(2)],
    "reordered": lambda device, chunks: [p for _, p in reversed(chunks)],
}


@pytest.mark.parametrize("kind", sorted(MANGLES))
def test_bad_chunks_are_refetched_never_installed(
        kind: str, start_agent: Callable[..., AgentProcess], watcher: Watcher,
        server: ChunkServer, device: str, bundles: dict[str, Path], tmp_path: Path) -> None:
    server.mangle = MANGLES[kind]
    agent = start_agent("--allow-unsigned", "--chunk-timeout", "1", bundle=bundles["v1"])
    offer = server.offer(bundles["v2"], CHUNK)
    server.deploy("lab", device, "dep-m", offer, soak_s=0.2)
    done = watcher.wait(("committed", "failed", "rolled_back"), "dep-m", 60)
    assert done["event"] == "committed", done
    installed = tmp_path / "state" / "slots/b/bundle.edgeml"
    assert installed.read_bytes() == bundles["v2"].read_bytes()
    assert agent.model() == ("tiny", 2)


def test_forged_chunk_fails_the_whole_file_check(
        start_agent: Callable[..., AgentProcess], watcher: Watcher, server: ChunkServer, device: str,
        bundles: dict[str, Path], tmp_path: Path) -> None:
    """A chunk with wrong data but a matching chunk sha256: the whole-file sha256 refuses it."""
    def forge(payload: bytes) -> bytes:
        _magic, _v, index, count, _n, bundle, _d = CHUNK_HEADER.unpack_from(payload)
        data = bytearray(payload[CHUNK_HEADER.size:])
        data[100] ^= 0xFF
        return encode_chunk(bundle.hex(), index, count, bytes(data))

    server.mangle = _once(2, forge)
    agent = start_agent("--allow-unsigned", bundle=bundles["v1"])
    server.deploy("lab", device, "dep-f", server.offer(bundles["v2"], CHUNK), soak_s=0.2)
    done = watcher.wait(("committed", "failed"), "dep-f", 60)
    assert done["event"] == "failed" and "sha256 mismatch" in done["reason"], done
    assert agent.model() == ("tiny", 1)
    assert not list((tmp_path / "state" / "slots/b").glob("download.*"))
    assert not (tmp_path / "state" / "slots/b/bundle.edgeml").exists()


REFUSALS = [
    # (case, first bundle, deployed bundle, agent options, command hints, reason)
    ("bad-signature", "v1-signed", "v2-other-key", ("--public-key", "{pub}"), True,
     "signature check failed"),
    ("unsigned", "v1-signed", "v2", ("--public-key", "{pub}"), True, "not signed"),
    ("no-key-configured", "v1", "v2", (), True, "no public key configured"),
    ("downgrade", "v2", "v1", ("--allow-unsigned",), False, "downgrade refused"),
    ("downgrade-hinted", "v2", "v1", ("--allow-unsigned",), True, "downgrade refused"),
    ("wrong-architecture", "v1", "v2-arm", ("--allow-unsigned",), True, "wrong architecture"),
    ("wrong-target", "v1", "v2-arm", ("--allow-unsigned", "--arch", "aarch64", "--target",
                                      "rpi5"), False, "wrong target"),
]


@pytest.mark.parametrize(("case", "first", "deployed", "options", "hints", "reason"),
                         REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_with_reason_old_model_serving(
        case: str, first: str, deployed: str, options: tuple[str, ...], hints: bool,
        reason: str, start_agent: Callable[..., AgentProcess], watcher: Watcher,
        server: ChunkServer, device: str, bundles: dict[str, Path], tmp_path: Path) -> None:
    args = [a.format(pub=bundles["pub"]) for a in options]
    agent = start_agent(*args, bundle=bundles[first])
    before = agent.model()
    server.deploy("lab", device, "dep-x", server.offer(bundles[deployed], CHUNK), soak_s=0.2,
                  hints=hints)
    done = watcher.wait(("committed", "failed", "rolled_back"), "dep-x", 60)
    assert done["event"] == "failed", done
    assert reason in done["reason"], done["reason"]
    assert agent.model() == before
    assert done["serving"]["version"] == before[1]
    assert not list((tmp_path / "state" / "slots/b").glob("download.*"))


def test_signed_bundle_with_the_right_key_installs(
        start_agent: Callable[..., AgentProcess], watcher: Watcher, server: ChunkServer, device: str,
        bundles: dict[str, Path]) -> None:
    agent = start_agent("--public-key", str(bundles["pub"]), bundle=bundles["v1-signed"])
    server.deploy("lab", device, "dep-s", server.offer(bundles["v2-signed"], CHUNK), soak_s=0.2)
    assert watcher.wait(("committed", "failed"), "dep-s", 60)["event"] == "committed"
    assert agent.model() == ("tiny", 2)


def test_trial_failure_rolls_back(start_agent: Callable[..., AgentProcess], watcher: Watcher,
                                  server: ChunkServer, device: str, bundles: dict[str, Path]) -> None:
    """Errors climb after the switch: the error-rate gate fails and v1 serves again."""
    agent = start_agent("--allow-unsigned", bundle=bundles["v1"])
    for _ in range(20):
        agent.predict()  # the old version: no errors
    server.deploy("lab", device, "dep-t", server.offer(bundles["v2"], CHUNK), soak_s=3.0,
                  gates=Gates(max_error_rate=0.05, min_requests=10))
    watcher.wait("switched", "dep-t", 60)
    bad = {k: v for k, v in ROW.items() if k != "mode"}
    errors = 0
    for _ in range(20):
        try:
            agent.predict([bad])
        except Exception:  # urllib raises HTTPError for the 400
            errors += 1
    assert errors == 20
    done = watcher.wait(("committed", "rolled_back"), "dep-t", 30)
    assert done["event"] == "rolled_back", done
    assert "error rate" in done["reason"]
    assert done["serving"]["version"] == 1
    assert agent.model() == ("tiny", 1)


def test_controller_cancels_a_transfer_and_rolls_back_a_trial(
        start_agent: Callable[..., AgentProcess], watcher: Watcher, server: ChunkServer,
        device: str, bundles: dict[str, Path], tmp_path: Path) -> None:
    agent = start_agent("--allow-unsigned", bundle=bundles["v1"])
    offer = server.offer(bundles["v2"], CHUNK)
    server.mangle = lambda _device, chunks: [p for i, p in chunks if i < 2]  # then silence
    server.deploy("lab", device, "dep-c", offer, soak_s=0.2)
    watcher.wait("received", "dep-c", 30)
    server.deploy("lab", device, "dep-other", offer, soak_s=0.2)  # one at a time
    assert "busy with deployment dep-c" in watcher.wait("failed", "dep-other", 30)["reason"]
    server.send("lab", device, Command("dep-c", "cancel"))
    done = watcher.wait(("failed", "committed"), "dep-c", 30)
    assert done["event"] == "failed" and done["reason"] == "cancelled by the controller"
    assert not list((tmp_path / "state/slots/b").glob("download.*"))
    assert agent.model() == ("tiny", 1)

    server.mangle = None
    server.deploy("lab", device, "dep-long", offer, soak_s=120.0)
    watcher.wait("switched", "dep-long", 60)
    assert agent.model() == ("tiny", 2)
    server.send("lab", device, Command("dep-long", "rollback"))
    done = watcher.wait(("rolled_back", "committed"), "dep-long", 30)
    assert done["event"] == "rolled_back" and done["reason"] == "rolled back by the controller"
    assert agent.model() == ("tiny", 1)


def test_zero_failed_requests_during_swap(start_agent: Callable[..., AgentProcess],
                                          watcher: Watcher, server: ChunkServer, device: str,
                                          bundles: dict[str, Path]) -> None:
    """4 keep-alive clients hammer 2 HTTP workers while v2 replaces v1: no request fails, a
    connection opened on v1 is answered by v2 after the switch, and no metrics window
    counts requests of the other version."""
    agent = start_agent("--allow-unsigned", "--workers", "2", bundle=bundles["v1"])
    host, port = agent.url.removeprefix("http://").rsplit(":", 1)
    stop = threading.Event()
    seen: dict[int, int] = {1: 0, 2: 0}
    failures: list[str] = []
    lock = threading.Lock()
    body = json.dumps({"instances": [ROW]})

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while not stop.is_set():
            try:
                conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    failures.append(f"{resp.status} {data[:100]!r}")
                    continue
                version = int(json.loads(data)["model"]["version"])
                with lock:
                    seen[version] += 1
            except Exception as exc:  # a failed request is what this test counts
                failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        server.deploy("lab", device, "dep-l", server.offer(bundles["v2"], CHUNK), soak_s=1.5)
        done = watcher.wait(("committed", "failed", "rolled_back"), "dep-l", 60)
        with lock:
            at_commit = dict(seen)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert done["event"] == "committed", done
    assert failures == []
    assert at_commit[1] > 50 and at_commit[2] > 50, at_commit
    assert seen[2] > at_commit[2]
    time.sleep(2.5)  # the last metrics windows
    counted = {1: 0, 2: 0}
    for m in watcher.metrics:
        counted[int(m["model"]["version"])] += m["requests"]["by_endpoint"].get("/v1/predict", 0)
    assert 0 < counted[1] <= seen[1] and 0 < counted[2] <= seen[2], (counted, seen)
