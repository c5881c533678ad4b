"""The agent's pieces on their own: protocol encoding, the state machine tables, the download
log, the config file and its precedence (the last with real ``edgeml agent`` processes)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from agent_support import BROKER, make_bundle

from edgeml.agent import machine as m
from edgeml.agent.config import KEYS, load_config, parse_yaml_subset
from edgeml.agent.protocol import (
    CHUNK_HEADER,
    BundleOffer,
    ChunkRequest,
    Command,
    Gates,
    ProtocolError,
    decode_chunk,
    encode_chunk,
)
from edgeml.agent.transfer import Download
from edgeml.agent.trial import MeterSnapshot, judge
from edgeml.cli import cli
from edgeml.errors import UsageError

DATA = os.urandom(5000)
OFFER = BundleOffer(hashlib.sha256(DATA).hexdigest(), len(DATA), 2048)


def _chunk(index: int) -> bytes:
    part = DATA[index * 2048:(index + 1) * 2048]
    return encode_chunk(OFFER.sha256, index, OFFER.count, part)


def test_chunks_round_trip_and_bad_ones_say_why() -> None:
    assert OFFER.count == 3 and OFFER.length(2) == 5000 - 4096
    assert decode_chunk(_chunk(2), OFFER).data == DATA[4096:]
    good = _chunk(1)
    cases = {
        good[:50]: "no complete header",
        good[:-1]: "truncated or padded",
        good + b"x": "truncated or padded",
        good[:-1] + bytes([good[-1] ^ 1]): "corrupted",
        b"XXXX" + good[4:]: "magic",
        encode_chunk("0" * 64, 1, 3, DATA[2048:4096]): "another bundle",
        encode_chunk(OFFER.sha256, 1, 4, DATA[2048:4096]): "the bundle has 3 chunks",
        encode_chunk(OFFER.sha256, 1, 3, DATA[2048:4000]): "truncated or padded",
        b'{"schema": "edgeml.chunk-error/1", "error": "gone"}': "refused: gone",
    }
    for payload, why in cases.items():
        with pytest.raises(ProtocolError, match=why):
            decode_chunk(payload, OFFER)
    assert CHUNK_HEADER.size == 84


def test_commands_and_requests_round_trip_and_validate() -> None:
    cmd = Command("dep-1", "install", OFFER, True, 5.0, Gates(0.1, 2.0, 5))
    assert Command.decode(cmd.encode()) == cmd
    req = ChunkRequest("dep-1", OFFER.sha256, 2048, (0, 2))
    assert ChunkRequest.decode(req.encode()) == req
    bad = [({"schema": "x"}, "schema"), ({"schema": "edgeml.deploy/1", "id": "a b"}, "id"),
           ({"schema": "edgeml.deploy/1", "id": "d", "action": "explode"}, "action"),
           ({"schema": "edgeml.deploy/1", "id": "d", "bundle": {"sha256": "zz"}}, "sha256"),
           ({"schema": "edgeml.deploy/1", "id": "d", "bundle": {**OFFER.to_dict(),
                                                                "chunk_size": 10}}, "chunk_size"),
           ({"schema": "edgeml.deploy/1", "id": "d", "bundle": OFFER.to_dict(),
             "gates": {"max_error_rate": 2}}, "gates")]
    for raw, field in bad:
        with pytest.raises(ProtocolError, match=field):
            Command.from_dict(raw)


def test_transition_table_is_closed_and_resume_covers_every_state() -> None:
    targets = set(m.TRANSITIONS.values()) | {s for s, _ in m.TRANSITIONS}
    assert targets == set(m.STATES)
    assert set(m.RESUME) == set(m.STATES)
    assert m.next_state("idle", "deploy") == "downloading"
    with pytest.raises(m.TransitionError, match="not allowed in state 'idle'"):
        m.next_state("idle", "committed")
    # restarted on trial: roll back; past the cap: give up
    rec = m.DeployRecord(state="trial", attempts=0)
    assert m.resume_state(rec) == ("rolling_back", "agent restarted while trial")
    rec = m.DeployRecord(state="downloading", attempts=m.MAX_ATTEMPTS)
    state, why = m.resume_state(rec)
    assert state == "failing" and why is not None and "gave up" in why
    assert m.resume_state(m.DeployRecord(state="downloading")) == ("downloading", None)


def test_record_survives_and_a_broken_one_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "deploy.json"
    assert m.load_record(path).state == "idle"
    m.save_record(path, m.DeployRecord(state="verifying", command={"id": "d"}))
    assert m.load_record(path).state == "verifying"
    path.write_text("{not json")
    with pytest.raises(Exception, match="unreadable deploy state"):
        m.load_record(path)


def test_download_log_resumes_and_drops_chunks_the_disk_lost(tmp_path: Path) -> None:
    dl = Download(tmp_path, OFFER, "dep")
    assert dl.open() == 0
    assert dl.to_request(2, 10.0) == [0, 1]
    for i in (0, 2):
        dl.write(decode_chunk(_chunk(i), OFFER))
    assert dl.write(decode_chunk(_chunk(0), OFFER)) is False  # a duplicate
    dl.close()
    with open(tmp_path / "download.chunks", "ab") as fh:
        fh.write(b"\x00\x01")  # a torn record
    again = Download(tmp_path, OFFER, "dep")
    assert again.open() == 2 and again.first_missing() == 1
    again.close()
    with open(tmp_path / "download.part", "r+b") as fh:  # the disk lost chunk 2's data
        fh.seek(4096)
        fh.write(b"\0\0\0")
    third = Download(tmp_path, OFFER, "dep")
    assert third.open() == 1 and third.have == {0}
    third.write(decode_chunk(_chunk(1), OFFER))
    third.write(decode_chunk(_chunk(2), OFFER))
    assert third.complete
    assert third.finish().read_bytes() == DATA
    other = Download(tmp_path, BundleOffer("1" * 64, 10_000, 2048), "dep-2")
    assert other.open() == 0  # another download: the old one is discarded
    other.discard()
    assert not list(tmp_path.iterdir())


def test_requests_in_flight_are_not_asked_again_while_chunks_still_arrive(
        tmp_path: Path) -> None:
    """On a slow link a window takes longer than the chunk timeout: chunks still on their way
    are asked again only once nothing arrives for the timeout (or after 4 timeouts)."""
    dl = Download(tmp_path, OFFER, "dep")
    dl.open()
    assert dl.to_request(2, 1.0) == [0, 1]
    for index in dl.requested:  # both asked 2 s ago (past the 1 s timeout)...
        dl.requested[index] -= 2.0
    dl.write(decode_chunk(_chunk(0), OFFER))  # ...but chunk 0 just arrived: the link moves
    assert dl.to_request(2, 1.0) == [2]  # 1 is still on its way: not asked again
    dl.last_progress -= 1.5  # then nothing for longer than the timeout: the link stalled
    assert dl.to_request(2, 1.0) == [1]
    dl.last_progress += 1.5
    dl.requested[1] -= 5.0  # asked more than 4 timeouts ago: lost even while others flow
    assert dl.to_request(2, 1.0) == [1]
    dl.close()


def test_gates() -> None:
    old = MeterSnapshot(ok=100, errors=0, p95_ms=1.0)
    gates = Gates(max_error_rate=0.05, max_p95_ratio=3.0, min_requests=20)
    assert judge(MeterSnapshot(100, 2, 1.5), old, gates) is None
    why = judge(MeterSnapshot(80, 20, 1.0), old, gates)
    assert why is not None and "error rate 20.0%" in why
    why = judge(MeterSnapshot(100, 0, 4.0), old, gates)
    assert why is not None and "4.0x" in why
    assert judge(MeterSnapshot(5, 5, 9.0), old, gates) is None  # too few to judge
    noisy = MeterSnapshot(ok=50, errors=50, p95_ms=1.0)  # the old version erred as much
    assert judge(MeterSnapshot(50, 50, 1.0), noisy, gates) is None


def test_yaml_subset(tmp_path: Path) -> None:
    text = ("# agent\ndevice_id: pump-7  # inline comment\nport: 8081\nmqtt:\n"
            "  broker: 'mqtt://h:1883'\n  base-topic: plant/edgeml\nallow_unsigned: true\n"
            "threads:\n")
    assert parse_yaml_subset(text) == {
        "device_id": "pump-7", "port": 8081, "allow_unsigned": True, "threads": None,
        "mqtt": {"broker": "mqtt://h:1883", "base-topic": "plant/edgeml"}}
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    assert load_config(path)["base_topic"] == "plant/edgeml"
    path.write_text(json.dumps({"http": {"port": 1}, "fleet": "f"}))
    assert load_config(path) == {"port": 1, "fleet": "f"}
    for bad, why in [("a: [1, 2]\n", "not supported"), ("port: 1\nport: 2\n", "twice"),
                     ("x\n", "expected 'key: value'"), ("a:\n  b: 1\n c: 2\n", "indentation"),
                     ("colour: red\n", "unknown key 'colour'")]:
        path.write_text(bad)
        with pytest.raises(UsageError, match=why):
            load_config(path)


def test_every_config_key_is_an_agent_option() -> None:
    command = cli.commands["agent"]
    options = {p.name for p in command.params} - {"config"}
    assert options == set(KEYS)


def _banner(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    """Start ``edgeml agent`` until it prints its mqtt line, then stop it (SIGTERM)."""
    proc = subprocess.Popen([sys.executable, "-m", "edgeml", "agent", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **env})
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith("mqtt: "):
                return line
        raise AssertionError("the agent did not start")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_precedence_flags_env_config(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", 1)
    base = f"agenttest-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "agent.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nbundle: {bundle}\nallow_unsigned: true\n"
                      f"http:\n  port: 0\nmqtt:\n  broker: {BROKER}\n  base_topic: {base}\n"
                      "  device_id: from-config\n")
    assert "device from-config " in _banner(tmp_path, {}, "--config", str(config))
    env = {"EDGEML_AGENT_DEVICE_ID": "from-env"}
    assert "device from-env " in _banner(tmp_path, env, "--config", str(config))
    line = _banner(tmp_path, env, "--config", str(config), "--device-id", "from-flag")
    assert "device from-flag " in line


def test_no_state_folder_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY",)}
    out = subprocess.run([sys.executable, "-m", "edgeml", "agent", "--broker", BROKER],
                         capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: the agent needs a state folder: --state-dir DIR "
                                  "(or $STATE_DIRECTORY)")
