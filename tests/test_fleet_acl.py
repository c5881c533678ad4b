"""``edgeml fleet acl``: the ACL file it writes, enforced by a real private Mosquitto.

The broker here runs on its own port with ``allow_anonymous false``, a ``password_file``
made by ``mosquitto_passwd -b`` and the ``acl_file`` written by the command. Devices are
users ``dev-a``/``dev-b`` (username = device id), the monitor is ``mon``.
"""

from __future__ import annotations

import getpass
import queue
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from _mqtt_support import free_port
from paho.mqtt.enums import CallbackAPIVersion

from edgeml.fleet.acl import (
    DEVICE_PUBLISHES,
    DEVICE_READS,
    DEVICE_READWRITE,
    AclSpec,
    render_acl,
)
from edgeml.runtime import topics
from edgeml.runtime.settings import BrokerSettings

FLEET = "lab"
PASSWORDS = {"dev-a": "pw-a", "dev-b": "pw-b", "mon": "pw-mon"}


def _edgeml(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeml", *args], capture_output=True,
                          text=True, timeout=60)


@dataclass
class Broker:
    port: int
    base: str
    acl: Path
    log: Path

    def url(self, user: str) -> str:
        return f"mqtt://{user}:{PASSWORDS[user]}@127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    folder = tmp_path_factory.mktemp("acl-broker")
    base = f"acltest-{uuid.uuid4().hex[:8]}"
    acl = folder / "edgeml.acl"
    result = _edgeml("fleet", "acl", "--fleet", FLEET, "--base", base, "--monitor-user", "mon",
                     "--out", str(acl))
    assert result.returncode == 0 and result.stdout == f"wrote {acl}\n", result
    passwd = folder / "passwd"
    passwd.touch(mode=0o600)
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True,
                       capture_output=True)
    port = free_port()
    log = folder / "mosquitto.log"
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join([
        f"listener {port} 127.0.0.1", "allow_anonymous false", f"password_file {passwd}",
        f"acl_file {acl}", "persistence false", f"user {getpass.getuser()}",
        f"log_dest file {log}", "log_type all", "",
    ]))
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, \
                    "private mosquitto did not start"
                time.sleep(0.05)
        yield Broker(port, base, acl, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Client:
    """A real MQTT v5 client logged in as ``user``: messages, SUBACK and PUBACK reason codes."""

    def __init__(self, broker: Broker, user: str, password: str | None = None) -> None:
        self.messages: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self.connack: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.subacks: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        self.pubacks: dict[int, Any] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"acl-{user}-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, PASSWORDS.get(user) if password is None else password)
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(list(rcs))
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_publish = lambda c, u, mid, rc, p: self.pubacks.__setitem__(mid, rc)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.reason = self.connack.get(timeout=10)

    def subscribe(self, *filters: str) -> list[Any]:
        self.client.subscribe([(f, 1) for f in filters])
        return self.subacks.get(timeout=10)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> Any:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        deadline = time.monotonic() + 5
        while info.mid not in self.pubacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.pubacks.get(info.mid)

    def received_until(self, marker: bytes, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """Every message up to (and without) the first whose payload is ``marker``."""
        out: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"marker {marker!r} never arrived; got {out}"
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if msg.payload == marker:
                return out
            out.append((msg.topic, bytes(msg.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(broker: Broker) -> Iterator[dict[str, Client]]:
    made = {user: Client(broker, user) for user in PASSWORDS}
    yield made
    for c in made.values():
        c.close()


def _t(broker: Broker, device: str) -> topics.DeviceTopics:
    return topics.DeviceTopics.create(broker.base, FLEET, device)


# -- the file ---------------------------------------------------------------------------


def test_every_topic_leaf_has_exactly_one_device_rule() -> None:
    ruled = [*DEVICE_READWRITE, *DEVICE_PUBLISHES, *DEVICE_READS]
    assert sorted(ruled) == sorted(topics.LEAVES)


def test_render_names_each_fleet_and_monitor() -> None:
    text = render_acl(AclSpec.create("plant-3/edgeml", ["lab", "line-2"], ["mon", "ops"]))
    lines = text.splitlines()
    assert "pattern write plant-3/edgeml/lab/%u/metrics" in lines
    assert "pattern read plant-3/edgeml/line-2/%u/deploy/set" in lines
    assert "pattern readwrite plant-3/edgeml/lab/%u/$state" in lines
    assert "pattern write plant-3/edgeml/lab/%u/deploy/set" not in lines
    assert lines.count("topic readwrite plant-3/edgeml/#") == 2
    assert lines.index("user mon") < lines.index("user ops")
    assert "pattern write edgeml/+/%u/metrics" in render_acl(AclSpec.create()).splitlines()


def test_cli_prints_and_refuses_bad_names() -> None:
    out = _edgeml("fleet", "acl", "--monitor-user", "mon")
    assert out.returncode == 0 and "user mon\ntopic readwrite edgeml/#\n" in out.stdout
    bad = _edgeml("fleet", "acl", "--fleet", "Lab/#")
    assert bad.returncode == 2 and "fleet id 'Lab/#' is not valid" in bad.stderr
    bad = _edgeml("fleet", "acl", "--monitor-user", "a b")
    assert bad.returncode == 2 and "monitor user 'a b' is not valid" in bad.stderr


# -- the broker enforcing it ------------------------------------------------------------


def test_unknown_users_and_wrong_passwords_are_refused(broker: Broker) -> None:
    for user, password in (("dev-a", "wrong"), ("nobody", "x")):
        c = Client(broker, user, password)
        try:
            assert c.reason.is_failure, (user, c.reason)
        finally:
            c.close()


def test_device_publishes_under_its_root_and_receives_its_commands(
        broker: Broker, clients: dict[str, Client]) -> None:
    a, mon = clients["dev-a"], clients["mon"]
    ta = _t(broker, "dev-a")
    subacks = a.subscribe(ta.deploy_set, ta.deploy_chunks, ta.infer, ta.feedback_set, ta.state)
    assert not any(r.is_failure for r in subacks), subacks
    assert not any(r.is_failure for r in mon.subscribe(f"{broker.base}/#"))
    # the device's own telemetry and reports reach the monitor
    own = [ta.metrics, ta.info, ta.deploy, ta.deploy_chunks_get, ta.samples, ta.feedback,
           ta.infer_response]
    for topic in own:
        assert not a.publish(topic, b"from-a").is_failure, topic
    a.publish(ta.state, b"ready", retain=True)
    a.publish(ta.metrics, b"end-a")
    seen = mon.received_until(b"end-a")
    assert {t for t, p in seen if p == b"from-a"} == set(own)
    assert (ta.state, b"ready") in seen
    # the monitor's commands reach the device
    for topic in (ta.deploy_set, ta.deploy_chunks, ta.infer, ta.feedback_set):
        assert not mon.publish(topic, b"cmd").is_failure
    mon.publish(ta.deploy_set, b"end-cmd")
    got = a.received_until(b"end-cmd")
    assert [t for t, p in got if p == b"cmd"] == [ta.deploy_set, ta.deploy_chunks, ta.infer,
                                                  ta.feedback_set]


def test_device_cannot_publish_as_another_nor_read_its_commands(
        broker: Broker, clients: dict[str, Client]) -> None:
    a, b, mon = clients["dev-a"], clients["dev-b"], clients["mon"]
    ta, tb = _t(broker, "dev-a"), _t(broker, "dev-b")
    assert not any(r.is_failure for r in b.subscribe(tb.deploy_set, tb.deploy_chunks, tb.infer,
                                                     tb.feedback_set, tb.state))
    mon.subscribe(f"{broker.base}/#")
    # A pretends to be B (telemetry, reports, state) and tries to command B and itself
    forged = [tb.metrics, tb.deploy, tb.info, tb.state, tb.deploy_set, tb.deploy_chunks,
              tb.infer, ta.deploy_set, f"{broker.base}/other/dev-a/metrics",
              f"{broker.base}/$alerts/{FLEET}/dev-b"]
    for topic in forged:
        reason = a.publish(topic, b"forged")
        assert reason is not None and reason.is_failure, (topic, reason)  # v5: 0x87
    # A tries to listen to B's commands, directly and with wildcards (Mosquitto 2 grants
    # the subscription and checks read access on each delivery)
    a.subscribe(tb.deploy_set, tb.deploy_chunks, f"{broker.base}/#",
                f"{broker.base}/{FLEET}/+/deploy/set")
    mon.publish(tb.deploy_set, b"for-b")
    mon.publish(tb.deploy_chunks, b"for-b")
    mon.publish(ta.deploy_set, b"end")  # A may read this one: it closes A's stream
    mon.publish(tb.deploy_set, b"end")
    b_got = b.received_until(b"end")
    assert b"forged" not in [p for _t2, p in b_got]
    assert (tb.deploy_set, b"for-b") in b_got and (tb.deploy_chunks, b"for-b") in b_got
    a_got = a.received_until(b"end")
    assert [t for t, _p in a_got if t.startswith(tb.root)] == [], a_got
    mon.publish(ta.metrics, b"end-mon")  # the monitor may publish anywhere under the base
    mon_got = mon.received_until(b"end-mon")
    assert [(t, p) for t, p in mon_got if p == b"forged"] == []


def test_monitor_reads_everything_with_a_shared_subscription(
        broker: Broker, clients: dict[str, Client]) -> None:
    a, b, mon = clients["dev-a"], clients["dev-b"], clients["mon"]
    shared = topics.shared_filter("monitors", topics.all_devices_filter(broker.base,
                                                                        topics.METRICS))
    assert not any(r.is_failure for r in mon.subscribe(shared))
    a.publish(_t(broker, "dev-a").metrics, b"m-a")
    b.publish(_t(broker, "dev-b").metrics, b"m-b")
    b.publish(_t(broker, "dev-b").metrics, b"end")
    got = mon.received_until(b"end")
    assert (_t(broker, "dev-a").metrics, b"m-a") in got
    assert (_t(broker, "dev-b").metrics, b"m-b") in got
    # a device joining the monitors' group reads nothing of other devices
    a.subscribe(shared)
    for i in range(10):
        b.publish(_t(broker, "dev-b").metrics, b"m-%d" % i)
    b.publish(_t(broker, "dev-b").metrics, b"end2")
    mon.received_until(b"end2")
    time.sleep(1.0)  # deliveries to A, had there been any, came before mon's "end2" or just after
    leaked = []
    while not a.messages.empty():
        leaked.append(a.messages.get().topic)
    assert leaked == []
    # (Mosquitto 2.0 still hands A its share of the group's messages and drops them at
    # delivery, so mon gets only about half of "m-*": keep the monitors' --group private.)


def test_agent_deploys_under_the_acl(broker: Broker, tmp_path: Path) -> None:
    """A real ``edgeml agent`` logged in as dev-a: telemetry, deploy reports and a whole
    transfer work under the ACL; the chunk server logs in as the monitor user."""
    from agent_support import AgentProcess, make_bundle

    from edgeml.agent.chunkserver import ChunkServer

    v1, v2 = make_bundle(tmp_path / "b", 1), make_bundle(tmp_path / "b", 2, pad=150 * 1024)
    watch = Client(broker, "mon")
    watch.subscribe(f"{broker.base}/#")
    agent = AgentProcess(tmp_path / "state", broker.base, "dev-a", "--allow-unsigned",
                         "--broker", f"mqtt://127.0.0.1:{broker.port}", "--username", "dev-a",
                         bundle=v1, fleet=FLEET, env={"EDGEML_MQTT_PASSWORD": "pw-a"})
    server = ChunkServer(BrokerSettings.from_url(broker.url("mon")), broker.base).start()
    ta = _t(broker, "dev-a")
    try:
        seen: list[tuple[str, bytes]] = []

        def wait_for(pred: Any, what: str, timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while not any(pred(t, p) for t, p in seen):
                left = deadline - time.monotonic()
                assert left > 0, f"no {what}: {[t for t, _ in seen]}\n{agent.read_stderr(True)}"
                try:
                    m = watch.messages.get(timeout=min(left, 0.5))
                except queue.Empty:
                    continue
                seen.append((m.topic, bytes(m.payload)))

        wait_for(lambda t, p: t == ta.state and p == b"ready", "$state ready")
        wait_for(lambda t, p: t == ta.info and b'"version": 1' in p.replace(b'":1', b'": 1'),
                 "$info")
        wait_for(lambda t, p: t == ta.metrics, "metrics")
        wait_for(lambda t, p: t == ta.deploy and b'"status"' in p, "a deploy status")
        server.deploy(FLEET, "dev-a", "acl-1", server.offer(v2, 64 * 1024), soak_s=0.5)
        wait_for(lambda t, p: t == ta.deploy and b'"committed"' in p, "committed")
        assert agent.model() == ("tiny", 2)
        assert server.chunks_sent >= 3
    finally:
        server.stop()
        agent.stop()
        agent.read_stderr()
        watch.close()
