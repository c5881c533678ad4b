"""``edgeml serve`` against a TLS broker with password authentication (private mosquitto)."""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from _mqtt_support import Recorder, free_port, make_bundle, start_serve, unique_id

from edgeml.runtime.topics import DeviceTopics


def _certificates(folder: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("edgeml test CA")).issuer_name(name("edgeml test CA"))
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(cert.public_bytes(pem))
    (folder / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    _certificates(tmp_path)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(tmp_path / "passwd"), "device", "s3cret"],
                   check=True, capture_output=True)
    port = free_port()
    (tmp_path / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\n"
        f"cafile {tmp_path}/ca.pem\ncertfile {tmp_path}/server.pem\nkeyfile {tmp_path}/server.key\n"
        f"allow_anonymous false\npassword_file {tmp_path}/passwd\n"
        f"persistence false\nuser {getpass.getuser()}\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "TLS mosquitto did not start"
                time.sleep(0.05)
        yield port, tmp_path
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_serve_over_tls_with_a_password(tls_broker: tuple[int, Path], tmp_path: Path) -> None:
    port, certs = tls_broker
    bundle = make_bundle(tmp_path / "bundle")
    topics = DeviceTopics.create("edgeml", "secure", unique_id("dev"))

    def secure(client: mqtt.Client) -> None:
        client.tls_set(ca_certs=str(certs / "ca.pem"))
        client.username_pw_set("device", "s3cret")

    rec = Recorder(port=port).start(topics.everything(), setup=secure)
    common = ("--device-id", topics.device, "--fleet", topics.fleet, "--metrics-interval", "1",
              "--tls-ca", str(certs / "ca.pem"), "--username", "device")
    good = start_serve(bundle, "--broker", f"mqtts://127.0.0.1:{port}", *common,
                       "--password", "s3cret", "--spool", str(tmp_path / "s1"))
    try:
        rec.wait_for(lambda m: m.topic == topics.state and m.payload == b"ready", what="ready")
        info = rec.wait_for(lambda m: m.topic == topics.info, what="$info").json()
        assert info["mqtt"]["broker"] == f"mqtts://device@127.0.0.1:{port}"  # no password
        rec.wait_for(lambda m: m.topic == topics.metrics, what="metrics over TLS")
    finally:
        assert good.terminate() == 0
        rec.stop()
    assert "s3cret" not in "".join(good.lines)
    bad = start_serve(bundle, "--broker", f"mqtts://127.0.0.1:{port}", *common,
                      "--password", "wrong", "--spool", str(tmp_path / "s2"))
    try:
        time.sleep(2)
    finally:
        assert bad.terminate() == 0
    log = "".join(bad.lines)
    assert "refused the connection" in log and "s3cret" not in log
