"""The HTTP server in a real process: every Open Inference Protocol v2 endpoint (shapes and
status codes), POST /v1/predict, GET /metrics, and the HTTP/1.1 edge cases (keep-alive,
pipelining, HEAD, Expect: 100-continue, chunked bodies, framing a proxy could read differently,
limits, timeouts), all over raw sockets where the bytes matter."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_text import parse_prometheus, sample_value
from runtime_bundles import ServerProcess, real_bundle

from edgeml.runtime.predictor import Predictor

PENGUIN = {"island": "Dream", "bill_length_mm": 41.5, "bill_depth_mm": 18.5,
           "flipper_length_mm": 201.0, "body_mass_g": 4000.0, "sex": "male"}
GENTOO = {"island": "Biscoe", "bill_length_mm": 47.0, "bill_depth_mm": 14.5,
          "flipper_length_mm": 215.0, "body_mass_g": 5400.0, "sex": None}
STRINGS = {"island", "sex"}
JSON = {"Content-Type": "application/json"}
MAX_BATCH = 16
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_bundle(tmp_path_factory, "penguins")[0]


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(bundle, "--max-batch", str(MAX_BATCH), "--max-body-bytes", str(MAX_BODY),
                        "--idle-timeout", "1.5", "--request-timeout", "1.5")
    yield srv
    stderr = srv.stop()
    assert "Traceback" not in stderr, stderr  # nothing unexpected happened in the server


def request(srv: ServerProcess, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or (JSON if body is not None else {}))
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def tensors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in rows[0]:
        string = name in STRINGS
        out.append({"name": name, "shape": [len(rows), 1], "datatype": "BYTES" if string else "FP32",
                    "data": [r[name] for r in rows]})
    return out


def error_of(status: int, body: bytes, expected: int) -> str:
    assert status == expected, body
    doc = json.loads(body)
    assert list(doc) == ["error"] and isinstance(doc["error"], str)
    return str(doc["error"])


# -- health and metadata ------------------------------------------------------------------


def test_health_endpoints(server: ServerProcess) -> None:
    for path, body in [("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True}),
                       ("/v2/models/penguins/ready", {"name": "penguins", "ready": True}),
                       ("/v2/models/penguins/versions/1/ready", {"name": "penguins", "ready": True})]:
        status, headers, raw = request(server, "GET", path)
        assert (status, json.loads(raw)) == (200, body)
        assert headers["content-type"] == "application/json"


def test_server_metadata(server: ServerProcess) -> None:
    status, _, raw = request(server, "GET", "/v2")
    doc = json.loads(raw)
    assert status == 200 and doc["name"] == "edgeml"
    assert isinstance(doc["version"], str) and "binary_tensor_data" in doc["extensions"]


def test_model_metadata(server: ServerProcess, bundle: Path) -> None:
    expected = Predictor(bundle).metadata()
    for path in ("/v2/models/penguins", "/v2/models/penguins/versions/1"):
        status, _, raw = request(server, "GET", path)
        doc = json.loads(raw)
        assert status == 200 and doc == expected
        assert {"name", "versions", "platform", "inputs", "outputs"} <= doc.keys()
        for tensor in doc["inputs"] + doc["outputs"]:
            assert set(tensor) == {"name", "datatype", "shape"}
            assert tensor["datatype"] in ("FP32", "BYTES") and tensor["shape"][0] == -1


def test_model_metadata_names_the_platform_as_triton_does(server: ServerProcess) -> None:
    status, _, raw = request(server, "GET", "/v2/models/penguins")
    assert status == 200 and json.loads(raw)["platform"] == "onnxruntime_onnx"


def test_repository_index(server: ServerProcess) -> None:
    expected = [{"name": "penguins", "version": "1", "state": "READY"}]
    for body in (None, b"", {"ready": True}, {"ready": False}):
        status, headers, raw = request(server, "POST", "/v2/repository/index",
                                       b"" if body is None else body)
        assert (status, json.loads(raw)) == (200, expected)
        assert headers["content-type"] == "application/json"
    status, headers, raw = request(server, "GET", "/v2/repository/index")
    error_of(status, raw, 405)
    assert headers["allow"] == "POST"
    status, _, raw = request(server, "POST", "/v2/repository/index", {"ready": "yes"})
    assert "ready" in error_of(status, raw, 400)


def test_unknown_model_version_and_route_are_404(server: ServerProcess) -> None:
    for path in ("/v2/models/iris", "/v2/models/iris/infer", "/v2/models/penguins/versions/2",
                 "/v2/models/penguins/versions/2/ready", "/v2/models/penguins/nope", "/v3",
                 "/v2/models/penguins/versions/1/infer/x"):
        status, _, raw = request(server, "GET", path)
        error_of(status, raw, 404)
    status, _, raw = request(server, "POST", "/v2/models/iris/infer", {"inputs": []})
    assert "unknown model 'iris'" in error_of(status, raw, 404)


def test_wrong_methods_are_405_with_allow(server: ServerProcess) -> None:
    for method, path, allow in [("GET", "/v1/predict", "POST"),
                                ("GET", "/v2/models/penguins/infer", "POST"),
                                ("POST", "/v2/health/live", "GET, HEAD"),
                                ("DELETE", "/v2/models/penguins", "GET, HEAD")]:
        status, headers, raw = request(server, method, path, b"" if method == "POST" else None)
        error_of(status, raw, 405)
        assert headers["allow"] == allow


# -- inference ----------------------------------------------------------------------------------


def test_oip_infer_json(server: ServerProcess, bundle: Path) -> None:
    rows = [PENGUIN, GENTOO]
    expected = Predictor(bundle).predict(rows)
    body = {"id": "req-7", "inputs": tensors(rows)}
    status, headers, raw = request(server, "POST", "/v2/models/penguins/versions/1/infer", body)
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(raw)
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("penguins", "1", "req-7")
    label, probs = doc["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2],
                     "data": expected.labels}
    assert (probs["name"], probs["datatype"], probs["shape"]) == ("probabilities", "FP32", [2, 3])
    np.testing.assert_allclose(np.reshape(probs["data"], (2, 3)), expected.probabilities,
                               rtol=1e-6)


def test_oip_infer_nested_data_flat_shape_and_requested_outputs(server: ServerProcess) -> None:
    flat = tensors([PENGUIN])
    for t in flat:
        t["shape"] = [1]  # [rows] with flat data
    nested = tensors([PENGUIN])
    for t in nested:
        t["data"] = [t["data"]]  # [rows, 1] in its natural nesting: [[v]]
    for inputs in (flat, nested):
        body = {"inputs": inputs, "outputs": [{"name": "label"}]}
        status, _, raw = request(server, "POST", "/v2/models/penguins/infer", body)
        doc = json.loads(raw)
        assert status == 200 and "id" not in doc
        assert doc["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [1],
                                   "data": ["Adelie"]}]
    mixed = tensors([PENGUIN, GENTOO])
    mixed[0]["data"] = [["Dream"], "Biscoe"]  # neither flat nor nested
    status, _, raw = request(server, "POST", "/v2/models/penguins/infer", {"inputs": mixed})
    assert "nested data does not match shape [2, 1]" in error_of(status, raw, 400)


def test_oip_infer_binary_tensors(server: ServerProcess) -> None:
    """Triton's binary tensor data extension, built by hand from its specification."""
    rows = [PENGUIN, GENTOO]
    inputs, blobs = [], []
    for name, value in PENGUIN.items():
        if isinstance(value, str):
            blob = b"".join(struct.pack("<I", len(v.encode())) + v.encode()
                            for v in [r[name] or "" for r in rows])
            datatype = "BYTES"
        else:
            blob = np.asarray([r[name] for r in rows], dtype="<f4").tobytes()
            datatype = "FP32"
        inputs.append({"name": name, "shape": [2, 1], "datatype": datatype,
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    header = json.dumps({"inputs": inputs, "outputs": [
        {"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    status, headers, raw = request(
        server, "POST", "/v2/models/penguins/infer", header + b"".join(blobs),
        {"Inference-Header-Content-Length": str(len(header)),
         "Content-Type": "application/octet-stream"})
    assert status == 200, raw
    split = int(headers["inference-header-content-length"])
    doc = json.loads(raw[:split])
    label, probs = doc["outputs"]
    assert label["data"] == ["Adelie", "Gentoo"]
    assert probs["parameters"] == {"binary_data_size": 24} and "data" not in probs
    values = np.frombuffer(raw[split:], dtype="<f4").reshape(2, 3)
    status, _, raw = request(server, "POST", "/v2/models/penguins/infer", {"inputs": tensors(rows)})
    np.testing.assert_array_equal(values, np.reshape(json.loads(raw)["outputs"][1]["data"], (2, 3)))


def test_tritonclient_works_unchanged(server: ServerProcess) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(f"{server.host}:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("penguins")
    assert client.get_model_metadata("penguins")["platform"] == "onnxruntime_onnx"
    inputs = []
    for name, value in GENTOO.items():
        array = np.array([[value or ""]], dtype=object if name in STRINGS else np.float32)
        tensor = httpclient.InferInput(name, [1, 1], "BYTES" if array.dtype == object else "FP32")
        tensor.set_data_from_numpy(array)  # binary by default
        inputs.append(tensor)
    result = client.infer("penguins", inputs, request_id="t1")  # binary outputs by default
    client.close()
    assert result.as_numpy("label").tolist() == [b"Gentoo"]
    assert result.as_numpy("probabilities").shape == (1, 3)
    assert result.get_response()["id"] == "t1"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b["inputs"].pop(), "missing input 'sex'"),
        (lambda b: b["inputs"].append({**b["inputs"][0], "name": "wings"}), "unknown input 'wings'"),
        (lambda b: b["inputs"][0].update(datatype="FP32"), "input 'island': datatype FP32"),
        (lambda b: b["inputs"][1].update(datatype="BYTES"), "datatype BYTES does not match"),
        (lambda b: b["inputs"][1].update(shape=[2, 1]), "shape says 2 values, data has 1"),
        (lambda b: b["inputs"][1].update(shape=[1, 2]), "has 2 columns"),
        (lambda b: b["inputs"][1].update(data=["heavy"]), "expected a number"),
        (lambda b: b.update(id=7), '"id" must be a string'),
        (lambda b: b.update(outputs=[{"name": "logits"}]), "unknown output 'logits'"),
        (lambda b: b.update(inputs={}), '"inputs" must be a non-empty list'),
    ],
)
def test_oip_infer_errors_are_400(server: ServerProcess, mutate: Any, message: str) -> None:
    body: dict[str, Any] = {"inputs": tensors([PENGUIN])}
    mutate(body)
    status, _, raw = request(server, "POST", "/v2/models/penguins/infer", body)
    assert message in error_of(status, raw, 400)


def test_v1_predict(server: ServerProcess, bundle: Path) -> None:
    rows = [PENGUIN, GENTOO]
    status, _, raw = request(server, "POST", "/v1/predict", {"instances": rows},
                             {"Content-Type": "application/json; charset=UTF-8"})
    assert status == 200
    doc = json.loads(raw)
    assert doc["model"] == {"name": "penguins", "version": 1}
    assert doc["predictions"] == json.loads(json.dumps(Predictor(bundle).predict(rows).rows()))
    assert [p["label"] for p in doc["predictions"]] == ["Adelie", "Gentoo"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b'{"instances": [', JSON, 400, "invalid JSON"),
        (b'{"instances": [{"island": NaN}]}', JSON, 400, "NaN is not valid JSON"),
        (b"\xff\xfe{}", JSON, 400, "not valid UTF-8"),
        (b"", JSON, 400, "body is empty"),
        (b'[{"island": "Dream"}]', JSON, 400, '"instances"'),
        (b'{"rows": []}', JSON, 400, '"instances" missing'),
        (b'{"instances": []}', JSON, 400, "empty batch"),
        (json.dumps({"instances": [PENGUIN] * (MAX_BATCH + 1)}).encode(), JSON, 413, "limit of 16"),
        (json.dumps({"instances": [{**PENGUIN, "beak": 1}]}).encode(), JSON, 400,
         "unknown feature 'beak'"),
        (json.dumps({"instances": [{**PENGUIN, "body_mass_g": "x"}]}).encode(), JSON, 400,
         "feature 'body_mass_g' row 0: expected a number"),
        (b'{"instances": [{"island": 1e999}]}', JSON, 400, "island"),
        (json.dumps({"instances": [PENGUIN]}).encode(), {"Content-Type": "text/plain"}, 415,
         "unsupported content type 'text/plain'"),
        (json.dumps({"instances": [PENGUIN]}).encode(),
         {"Content-Type": "application/json; charset=latin-1"}, 415, "charset"),
        (b"[" * 50_000 + b"]" * 50_000, JSON, 413, "exceeds the limit"),
        (b"[" * 20_000 + b"]" * 20_000, JSON, 400, "nested too deeply"),
    ],
)
def test_v1_predict_errors(server: ServerProcess, body: bytes, headers: dict[str, str],
                           status: int, message: str) -> None:
    got, _, raw = request(server, "POST", "/v1/predict", body, headers)
    assert message in error_of(got, raw, status)


def test_metrics_parse_and_count_requests(server: ServerProcess) -> None:
    def scrape() -> dict[str, Any]:
        status, headers, raw = request(server, "GET", "/metrics")
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse_prometheus(raw.decode())

    before = scrape()
    for _ in range(5):
        request(server, "POST", "/v1/predict", {"instances": [PENGUIN, GENTOO]})
    request(server, "POST", "/v1/predict", {"instances": [{"beak": 1}]})
    after = scrape()

    def delta(metric: str, **labels: str) -> float:
        def value(fam: dict[str, Any]) -> float:
            try:
                return sample_value(fam, metric, **labels)
            except AssertionError:
                return 0.0
        return value(after) - value(before)

    assert delta("edgeml_requests_total", endpoint="/v1/predict") == 6
    assert delta("edgeml_errors_total", kind="input") == 1
    assert delta("edgeml_predictions_total", **{"class": "Adelie"}) == 5
    assert delta("edgeml_predictions_total", **{"class": "Gentoo"}) == 5
    assert delta("edgeml_request_latency_seconds_count") == 5
    assert delta("edgeml_feature_missing_total", feature="sex") == 5
    assert sample_value(after, "edgeml_model_info", name="penguins", version="1") == 1


# -- HTTP/1.1 behaviour ---------------------------------------------------------------------


def raw_exchange(srv: ServerProcess, data: bytes, wait: float = 5.0) -> bytes:
    """Send ``data``, read until the server closes or ``wait`` seconds pass."""
    with socket.create_connection((srv.host, srv.port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def test_keep_alive_and_pipelining_answer_in_order(server: ServerProcess) -> None:
    requests = b"".join(
        post("/v2/models/penguins/infer",
             json.dumps({"id": rid, "inputs": tensors([row])}).encode())
        for rid, row in [("a", PENGUIN), ("b", GENTOO), ("c", PENGUIN)]
    ) + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    raw = raw_exchange(server, requests)
    assert raw.count(b"HTTP/1.1 200 OK") == 4
    ids = [json.loads(part.split(b"\r\n\r\n", 1)[1])["id"]
           for part in raw.split(b"HTTP/1.1 200 OK")[1:4]]
    assert ids == ["a", "b", "c"]
    assert raw.endswith(b'{"live":true}')


def test_http10_head_and_expect_continue(server: ServerProcess) -> None:
    raw = raw_exchange(server, b"GET /v2/health/ready HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in raw  # then closed
    raw = raw_exchange(server, b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close"
                               b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 13\r\n" in raw
    assert raw.endswith(b"\r\n\r\n")
    body = json.dumps({"instances": [PENGUIN]}).encode()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(post("/v1/predict", body, "Expect: 100-continue\r\n")[: -len(body)])
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\n\r\n", b"505"),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"400"),
        (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", b"400"),
        (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
         b"Content-Length: 6\r\n\r\n2\r\n{}\r\n0\r\n\r\n", b"400"),
        (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
         b"501"),
        (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", b"400"),
        (b"POST /v1/predict HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400"),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad(Name): 1\r\n\r\n", b"400"),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nX: 1\r\n folded\r\n\r\n", b"400"),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", b"400"),
        (b"GET /v2 HTTP/1.1\r\nHost: x/y\r\n\r\n", b"400"),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", b"400"),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
        (post("/v1/predict", b"") .replace(b"Content-Length: 0", b"Content-Length: 999999"), b"413"),
    ],
)
def test_protocol_errors_answer_json_and_close(server: ServerProcess, data: bytes,
                                               status: bytes) -> None:
    raw = raw_exchange(server, data)
    assert raw.startswith(b"HTTP/1.1 " + status), raw[:100]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert isinstance(json.loads(body)["error"], str)


def responses(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of every response in a raw byte stream (100 Continue included)."""
    out = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        n = int(length.group(1)) if length else 0
        out.append((int(head.split(b" ")[1]), raw[:n]))
        raw = raw[n:]
    return out


def answers(raw: bytes) -> list[int]:
    return [status for status, _ in responses(raw)]


def chunked(body: bytes, size: int = 7, extensions: bool = False) -> bytes:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    ext = ";note=\"edge ml\";x" if extensions else ""
    return b"".join(f"{len(p):x}{ext}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n"


GET_LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 40\r\n\r\nabc" + GET_LIVE,
         400, "conflicting Content-Length"),
        (b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40"
         b"\r\n\r\nabc" + GET_LIVE, 400, "conflicting Content-Length"),
        (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Note: a\nContent-Length: 5\r\n\r\nhello",
         400, "bare CR or LF"),
        (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Note: a\x00b\r\n\r\n", 400, "NUL"),
        (b"GET /v2/health/live HTTP/1.1\r\nUser-Agent: t\r\n\r\n", 400, "missing Host"),
    ],
    ids=["content-length-list", "two-content-lengths", "bare-lf-in-value", "nul-in-value",
         "missing-host"],
)
def test_ambiguous_framing_is_400_and_nothing_else_is_answered(
    server: ServerProcess, data: bytes, status: int, message: str
) -> None:
    """Requests a proxy could read differently: one 400, the connection closed, no smuggled
    second request answered."""
    raw = raw_exchange(server, data)
    assert answers(raw) == [status], raw[:300]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert message in json.loads(body)["error"]


def test_chunked_body_is_predicted(server: ServerProcess, bundle: Path) -> None:
    body = json.dumps({"instances": [PENGUIN, GENTOO]}).encode()
    expected = json.loads(json.dumps(Predictor(bundle).predict([PENGUIN, GENTOO]).rows()))
    for extensions, trailer in ((False, b""), (True, b"X-Checksum: none\r\n")):
        data = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                + chunked(body, extensions=extensions) + trailer + b"\r\n")
        raw = raw_exchange(server, data)
        assert answers(raw) == [200], raw[:300]
        doc = json.loads(raw.partition(b"\r\n\r\n")[2])
        assert doc["predictions"] == expected
    # sent in small pieces, with Expect: 100-continue, then another request on the connection
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        payload = chunked(body, size=50) + b"\r\n"
        for i in range(0, len(payload), 13):
            sock.sendall(payload[i:i + 13])
            time.sleep(0.002)
        sock.sendall(GET_LIVE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    (first, doc), (second, live) = responses(raw)
    assert (first, second, live) == (200, 200, b'{"live":true}')
    assert json.loads(doc)["predictions"] == expected


def test_chunked_body_over_the_limit_is_413_and_closed(server: ServerProcess) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent, raw = 0, b""
        sock.settimeout(0.05)
        while not raw and sent < 8 * MAX_BODY:  # upload until answered, as a streaming client
            sock.sendall(b"4000\r\n" + b" " * 0x4000 + b"\r\n")
            sent += 0x4000
            with contextlib.suppress(TimeoutError):
                raw += sock.recv(65536)
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):  # b"" once the server closed
                raw += chunk
    assert answers(raw) == [413]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert f"exceeds the limit of {MAX_BODY} bytes" in json.loads(body)["error"]
    assert sent <= 2 * MAX_BODY  # answered once the limit was passed, not at the end
    status, _, _ = request(server, "GET", "/v2/health/live")
    assert status == 200


def test_no_100_continue_for_http10(server: ServerProcess) -> None:
    body = json.dumps({"instances": [PENGUIN]}).encode()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"POST /v1/predict HTTP/1.0\r\nContent-Length: {len(body)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1024)  # HTTP/1.0 does not know 100 Continue: nothing until the body
        sock.settimeout(5)
        sock.sendall(body)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert answers(raw) == [200]


def test_idle_and_slow_connections_are_closed(server: ServerProcess) -> None:
    start = time.monotonic()
    assert raw_exchange(server, b"", wait=8) == b""  # idle: closed without a word
    assert time.monotonic() - start < 6
    raw = raw_exchange(server, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{",
                       wait=8)
    assert raw.startswith(b"HTTP/1.1 408")
    status, _, _ = request(server, "GET", "/v2/health/live")
    assert status == 200  # still serving


def test_rows_encoder_writes_what_the_json_encoder_writes(tmp_path: Path) -> None:
    """The templated /v1/predict encoder is byte-identical to json of Prediction.rows()."""
    from bundle_factory import make_bundle

    from edgeml.runtime.oip import RowsEncoder, _encode
    from edgeml.runtime.prediction import Prediction

    for task in ("classification", "regression", "anomaly"):
        built = make_bundle(tmp_path / task, task)
        p = Predictor(built.path)
        encoder = RowsEncoder(p.task, p.classes, p.decoder.index("probabilities") >= 0)
        for n in (1, 7, 64):
            prediction = p.predict(built.frame.head(n).to_dict(orient="records"))
            assert encoder(prediction) == _encode(prediction.rows())
            assert json.loads(encoder(prediction)) == json.loads(json.dumps(prediction.rows()))
        # a non-finite model output is never written as NaN (not JSON): it becomes null
        results = [np.asarray(r).copy() for r in prediction._results]
        results[-1].reshape(-1)[0] = np.nan
        broken = Prediction(p.decoder, results)
        text = encoder(broken)
        assert b"NaN" not in text and b"null" in text
        json.loads(text)
