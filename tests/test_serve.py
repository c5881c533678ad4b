"""`edgeml serve` settings: options from the environment, one-line errors, workers, threads.

Every test runs the real command in a subprocess and talks to it over real sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _mqtt_support import SHARED_PORT, clear_retained, free_port, unique_id
from bundle_factory import BuiltBundle, make_bundle
from runtime_bundles import ServerProcess

from edgeml.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltBundle:
    return make_bundle(tmp_path_factory.mktemp("serve"), "classification", name="toy")


def _rows(built: BuiltBundle, n: int) -> list[dict[str, Any]]:
    rows = json.loads(built.frame.head(n).to_json(orient="records"))
    assert len(rows) == n
    return rows


def _run(bundle: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeml", "serve", str(bundle), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _exchange(host: str, port: int, requests: list[bytes]) -> list[tuple[int, bytes]]:
    """Send ``requests`` pipelined on one connection; (status, body) of each answer, in order."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        buf, out = b"", []
        while len(out) < len(requests):
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {len(out)} answers"
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(int(v) for k, _, v in (h.partition(": ") for h in lines[1:])
                          if k.lower() == "content-length")
            while len(buf) < length:
                buf += sock.recv(65536)
            out.append((int(lines[0].split()[1]), buf[:length]))
            buf = buf[length:]
    return out


def _post(rows: list[dict[str, Any]]) -> bytes:
    body = json.dumps({"instances": rows}).encode()
    return (b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


@pytest.fixture
def env_server(built: BuiltBundle) -> Iterator[tuple[ServerProcess, int]]:
    port = free_port()
    old = dict(os.environ)
    os.environ.update({"EDGEML_SERVE_PORT": str(port + 1), "EDGEML_SERVE_MAX_BODY_BYTES": "2000",
                       "EDGEML_SERVE_WORKERS": "2", "EDGEML_SERVE_THREADS": "2"})
    try:  # ServerProcess passes --port 0: the command line wins over $EDGEML_SERVE_PORT
        srv = ServerProcess(built.path)
    finally:
        os.environ.clear()
        os.environ.update(old)
    yield srv, port
    assert "Traceback" not in srv.stop()


def test_every_option_can_come_from_the_environment(
    built: BuiltBundle, env_server: tuple[ServerProcess, int]
) -> None:
    srv, port = env_server
    assert "workers: 2, onnxruntime threads: 2\n" in srv.banner
    assert srv.port != port + 1  # --port 0 on the command line beat $EDGEML_SERVE_PORT
    small, big = _rows(built, 3), _rows(built, 60)
    assert len(json.dumps({"instances": big})) > 2000
    (status, body), (big_status, big_body) = _exchange(srv.host, srv.port,
                                                       [_post(small), _post(big)])
    assert status == 200 and len(json.loads(body)["predictions"]) == 3
    assert big_status == 413
    assert "exceeds the limit of 2000 bytes" in json.loads(big_body)["error"]


def _banner(argv: list[str]) -> list[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    return lines


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and 2 cores")
def test_default_workers_follow_the_cores_the_process_may_use(built: BuiltBundle) -> None:
    serve = [sys.executable, "-m", "edgeml", "serve", str(built.path), "--port", "0",
             "--log-level", "warning"]
    cores = min(len(os.sched_getaffinity(0)), 4)
    assert f"workers: {cores}, onnxruntime threads: 1\n" in _banner(serve)
    pinned = sorted(os.sched_getaffinity(0))[0]
    assert "workers: 1, onnxruntime threads: 1\n" in _banner(["taskset", "-c", str(pinned), *serve])


def test_buffered_bytes_limit_from_the_command_line(built: BuiltBundle) -> None:
    srv = ServerProcess(built.path, "--max-buffered-bytes", "100000", "--max-body-bytes", "1000000")
    try:
        body = b'{"instances": [' + b" " * 400_000 + b"]}"
        head = (b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        raw = b""
        with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
            # the server may answer and close before the upload ends
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(head + body)
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    raw += chunk
        assert raw.startswith(b"HTTP/1.1 503 "), raw[:200]
    finally:
        assert "Traceback" not in srv.stop()


def test_port_from_the_environment(built: BuiltBundle, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeml", "serve", str(built.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "EDGEML_SERVE_PORT": str(port),
                                 "EDGEML_SERVE_LOG_LEVEL": "warning",
                                 "EDGEML_VERSION": "0.1"})  # a build argument, not --version
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert f"http: http://127.0.0.1:{port}\n" in lines, lines
        [(status, _)] = _exchange("127.0.0.1", port, [_post(_rows(built, 1))])
        assert status == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_broker_credentials_still_come_from_edgeml_mqtt_variables(
    built: BuiltBundle, tmp_path: Path
) -> None:
    broker = f"mqtt://127.0.0.1:{SHARED_PORT}"
    refused = _run(built.path, "--broker", broker, "--port", "0",
                   env={"EDGEML_MQTT_PASSWORD": "s3cret"})
    assert refused.returncode == 2
    assert refused.stderr.strip() == "error: a broker password needs a username"

    device = unique_id("env").lower().replace("_", "-")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeml", "serve", str(built.path), "--port", "0",
         "--broker", broker, "--spool", str(tmp_path / "spool"), "--device-id", device],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "EDGEML_MQTT_USERNAME": "pump-07", "EDGEML_MQTT_PASSWORD": "s3cret"})
    try:
        assert proc.stdout is not None
        line = ""
        while not line.startswith(("mqtt: ", "press")):
            line = proc.stdout.readline()
            assert line, "serve exited early"
        assert line.startswith(f"mqtt: mqtt://pump-07@127.0.0.1:{SHARED_PORT} device {device}")
        assert "s3cret" not in line
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        clear_retained(f"edgeml/default/{device}")


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--metrics-interval", "0", "--broker", "mqtt://127.0.0.1:1"], {},
     "error: metrics interval 0.0 must be > 0 seconds"),
    ([], {"EDGEML_SERVE_WORKERS": "many"}, "'many' is not a valid integer"),
    (["--idle-timeout", "0"], {}, "Invalid value for '--idle-timeout'"),
])
def test_bad_settings_exit_2_with_one_line(
    built: BuiltBundle, args: list[str], env: dict[str, str], message: str
) -> None:
    result = _run(built.path, "--port", "0", *args, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_two_workers_answer_concurrent_connections_in_order(built: BuiltBundle) -> None:
    rows = _rows(built, 40)
    local = Predictor(built.path)  # one row at a time, as the clients send them
    expected = [json.dumps(local.predict([r]).rows()[0], sort_keys=True) for r in rows]
    srv = ServerProcess(built.path, "--workers", "2")
    try:
        assert "workers: 2, onnxruntime threads: 1\n" in srv.banner
        assert len(os.listdir(f"/proc/{srv.proc.pid}/task")) >= 2  # a second event loop

        answers: dict[int, list[str]] = {}
        failures: list[BaseException] = []

        def client(k: int) -> None:
            try:
                order = [(k * 7 + i) % len(rows) for i in range(30)]  # pipelined, per client
                got = _exchange(srv.host, srv.port, [_post([rows[i]]) for i in order])
                assert all(status == 200 for status, _ in got)
                answers[k] = [json.dumps(json.loads(body)["predictions"][0], sort_keys=True)
                              for _, body in got]
                assert answers[k] == [expected[i] for i in order]
            except BaseException as exc:  # reported below
                failures.append(exc)

        clients = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(60)
        assert not failures, failures[0]
        assert len(answers) == 8
        [(status, metrics)] = _exchange(srv.host, srv.port, [
            b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"])
        assert status == 200
        line = next(x for x in metrics.decode().splitlines()
                    if x.startswith("edgeml_requests_total") and "/v1/predict" in x)
        assert float(line.rsplit(" ", 1)[1]) == 8 * 30  # one set of statistics for both workers
    finally:
        assert "Traceback" not in srv.stop()
