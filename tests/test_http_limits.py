"""Resource limits that fit the device: connections, buffered request bytes, time.

The limits come from the device profile (``serve:`` in ``devices/<name>.yaml``), are recorded
in the bundle manifest (``target.serve``) and are what ``edgeml serve`` uses unless told
otherwise. The main test is an attack on a real ``edgeml serve`` process started on an
``rpi-zero2`` bundle: hundreds of slowloris connections (headers a line at a time) and slow
uploads (1000 KiB of a body just under the 1 MiB limit, then a byte now and then),
reconnecting when dropped. Without the connection and buffer limits (the same attack with
``--max-connections 100000 --max-buffered-bytes 100000000000``) the server peaked at ~270 MiB
against the profile's 256 MiB budget; with them, at ~100 MiB. The server's
peak RSS must stay within the profile's memory budget, its open sockets within the profile's
connection limit, and a normal client must be answered all along; the RSS and the normal
client's latency are written to the terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundle_factory import make_bundle, rewrite_member
from runtime_bundles import ServerProcess

from edgeml.bundle.manifest import MANIFEST, Manifest, ServeLimits, TargetInfo
from edgeml.package.profiles import CHECKOUT_DIR, PACKAGED_DIR, load_profile
from edgeml.runtime.http_protocol import Limits

SLOWLORIS = 100  # connections sending headers a line at a time
SLOW_BODIES = 200  # connections sending most of a large body, then trickling
ATTACK_SECONDS = 8.0
ROW = {"temp": 21.0, "pressure": 1001.0, "color": "red"}


def zero2_bundle(tmp: Path) -> tuple[Path, int, ServeLimits]:
    """A bundle packaged for rpi-zero2: its manifest carries the profile's serve limits."""
    profile = load_profile("rpi-zero2")
    built = make_bundle(tmp / "build", "classification", name="toy", target="rpi-zero2",
                        nullable=False)
    limits = profile.serve.manifest_limits()
    target = dataclasses.replace(built.manifest.target, serve=limits,
                                 memory_budget_mb=profile.memory_budget_mb)
    manifest = dataclasses.replace(built.manifest, target=target)
    path = rewrite_member(built.path, tmp / built.path.name, MANIFEST, manifest.to_json())
    return path, profile.memory_budget_mb, limits


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def open_sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


class Attacker:
    """One hostile connection: slowloris headers or a slow upload; reconnects when dropped."""

    BODY = b" " * (1000 * 1024)

    def __init__(self, host: str, port: int, kind: str) -> None:
        self.addr = (host, port)
        self.kind = kind
        self.sock: socket.socket | None = None
        self.next_try = 0.0
        self.drops = 0

    def _connect(self) -> None:
        sock = socket.create_connection(self.addr, timeout=0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        self.sock = sock
        if self.kind == "slowloris":
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: device\r\n")
        else:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: device\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 1040000\r\n\r\n")
            with contextlib.suppress(TimeoutError):  # the socket buffers may fill up
                sock.sendall(self.BODY)

    def tick(self, now: float) -> None:
        try:
            if self.sock is None:
                if now < self.next_try:
                    return
                self.next_try = now + 2.0
                self._connect()
            else:
                assert self.sock is not None
                self.sock.sendall(b"X-Slow: 1\r\n" if self.kind == "slowloris" else b" ")
        except OSError:
            self.drops += 1
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.fixture(scope="module")
def zero2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int, ServeLimits]]:
    path, budget_mb, limits = zero2_bundle(tmp_path_factory.mktemp("zero2"))
    srv = ServerProcess(path)
    yield srv, budget_mb, limits
    stderr = srv.stop()
    assert "Traceback" not in stderr, stderr


def predict(srv: ServerProcess) -> tuple[int, float]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    conn.request("POST", "/v1/predict", body=json.dumps({"instances": [ROW]}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, time.perf_counter() - start


def test_slow_connections_do_not_exhaust_an_rpi_zero2(
    zero2: tuple[ServerProcess, int, ServeLimits], capsys: pytest.CaptureFixture[str]
) -> None:
    srv, budget_mb, limits = zero2
    pid = srv.proc.pid
    assert limits.max_connections is not None
    status, _ = predict(srv)
    assert status == 200
    idle = proc_status(pid)["VmRSS"]
    attackers = [Attacker(srv.host, srv.port, "slowloris") for _ in range(SLOWLORIS)]
    attackers += [Attacker(srv.host, srv.port, "body") for _ in range(SLOW_BODIES)]
    latencies: list[float] = []
    statuses: list[int] = []
    sockets: list[int] = []
    peak_rss = 0
    start = time.monotonic()
    try:
        while (now := time.monotonic()) - start < ATTACK_SECONDS:
            for a in attackers:
                a.tick(now)
            status, latency = predict(srv)  # a normal client, on a new connection each time
            statuses.append(status)
            latencies.append(latency)
            sockets.append(open_sockets(pid))
            peak_rss = max(peak_rss, proc_status(pid)["VmRSS"])
            time.sleep(0.1)
        drops = sum(a.drops for a in attackers)
    finally:
        for a in attackers:
            a.close()
    hwm = proc_status(pid)["VmHWM"]
    mib = 1024 * 1024
    summary = (f"rpi-zero2 limits {limits}: {len(attackers)} slow connections ({drops} dropped "
               f"by the server and reopened) for {ATTACK_SECONDS:.0f} s; server RSS idle "
               f"{idle / mib:.0f} MiB, peak {max(peak_rss, hwm) / mib:.0f} MiB (budget {budget_mb} "
               f"MiB); server sockets median {statistics.median(sockets):.0f}, peak {max(sockets)} "
               f"(limit {limits.max_connections} connections); normal "
               f"client: {len(latencies)} requests, latency median "
               f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    with capsys.disabled():  # shown without -s too
        print("\n" + summary)
    assert statuses == [200] * len(statuses)
    assert max(peak_rss, hwm) <= budget_mb * mib
    # besides the connections: the listening socket and one copy per worker; and the socket of
    # a dropped connection closes when its loop gets back to it, which lags on a busy machine
    # while attackers reconnect by the hundred (measured: median 69-102, peak ~110 with the
    # cap of 64; without the cap the server holds all ~300)
    assert statistics.median(sockets) <= 2 * limits.max_connections
    assert max(sockets) < len(attackers) / 2
    assert drops > 0  # the attack did press against the limits
    status, _ = predict(srv)
    assert status == 200


# -- where the limits come from --------------------------------------------------------------


def test_profiles_define_smaller_limits_for_small_devices() -> None:
    zero2, armv7, x86 = (load_profile(n).serve for n in ("rpi-zero2", "rpi-armv7", "x86_64"))
    default = Limits()
    for small in (zero2, armv7):
        assert small.max_connections is not None and small.max_connections < default.max_connections
        assert small.max_buffered_bytes is not None
        assert small.max_buffered_bytes < default.max_buffered_bytes
        assert small.max_body_bytes is not None and small.max_body_bytes < default.max_body_bytes
    assert zero2.max_buffered_bytes is not None and armv7.max_buffered_bytes is not None
    assert zero2.max_buffered_bytes < armv7.max_buffered_bytes
    assert Limits.for_target(x86.manifest_limits()) == default
    # the stock profiles shipped in the package are the ones in the checkout
    for name in ("rpi-zero2", "rpi-armv7"):
        assert (CHECKOUT_DIR / f"{name}.yaml").read_text() == (PACKAGED_DIR / f"{name}.yaml").read_text()


def test_manifest_records_limits_and_old_manifests_load_with_defaults() -> None:
    limits = load_profile("rpi-zero2").serve.manifest_limits()
    target = TargetInfo(name="rpi-zero2", arch="aarch64", serve=limits)
    raw = json.loads(json.dumps(dataclasses.asdict(target)))
    assert TargetInfo(**raw).serve == limits
    del raw["serve"]  # a manifest written before the field existed
    assert TargetInfo(**raw).serve == ServeLimits()
    assert Limits.for_target(TargetInfo(**raw).serve) == Limits()


def test_explicit_settings_override_the_profile() -> None:
    limits = load_profile("rpi-zero2").serve.manifest_limits()
    resolved = Limits.for_target(limits, max_body_bytes=4096, request_timeout=None)
    assert resolved.max_body_bytes == 4096  # explicit
    assert resolved.request_timeout == limits.request_timeout  # None: the profile's
    assert resolved.max_connections == limits.max_connections
    assert resolved.max_headers == Limits().max_headers  # neither: the runtime default


def test_a_manifest_with_bad_limits_is_refused(tmp_path: Path) -> None:
    from edgeml.errors import BundleError

    built = make_bundle(tmp_path, "classification", name="toy")
    raw = json.loads(built.manifest.to_json())
    raw["target"]["serve"] = {"max_connections": "many"}
    with pytest.raises(BundleError, match=r"target\.serve\.max_connections"):
        Manifest.from_dict(raw)
