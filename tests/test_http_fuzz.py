"""Fuzzing both POST endpoints of a real server process with malformed payloads (hypothesis).

Every payload is invalid by construction (a valid request with one invalid mutation, random
JSON or bytes, a wrong content type, deep nesting, NaN/Infinity tokens, huge numbers, an
oversize batch or body). Each answer must be a 4xx with a JSON ``{"error": str}`` body, the
keep-alive connection must survive every answer that does not announce ``Connection:
close``, and afterwards the server must still answer a valid request and have logged no
traceback.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import make_bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_bundles import ServerProcess

MAX_BATCH = 32
MAX_BODY = 32 * 1024
EXAMPLES = int(__import__("os").environ.get("FUZZ_EXAMPLES", "1000"))  # per endpoint
VALID_ROW = {"temp": 20.0, "pressure": 1000.0, "color": "red"}
NUMERIC = ("temp", "pressure")
STRINGS = ("color",)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture,
                                       HealthCheck.large_base_example])


class Client:
    """One keep-alive connection; reconnects only when the server said Connection: close."""

    def __init__(self, srv: ServerProcess) -> None:
        self.srv = srv
        self.conn: http.client.HTTPConnection | None = None
        self.unexpected_drops = 0

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.srv.host, self.srv.port, timeout=20)
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                self.unexpected_drops += 1
                if attempt:
                    raise
                continue
            if (resp.getheader("Connection") or "").lower() == "close":
                self.conn.close()
                self.conn = None
            return resp.status, data
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    built = make_bundle(tmp_path_factory.mktemp("fuzz"), "classification", name="toy",
                        nullable=False)
    srv = ServerProcess(Path(built.path), "--max-batch", str(MAX_BATCH),
                        "--max-body-bytes", str(MAX_BODY))
    yield srv
    stderr = srv.stop()
    assert "Traceback" not in stderr, stderr


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    c = Client(server)
    yield c
    if c.conn is not None:
        c.conn.close()


# -- strategies -------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.integers(min_value=10**39, max_value=10**60), st.integers(min_value=10**4400,
                                                                 max_value=10**4500),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=20)
not_a_number = st.one_of(st.none(), st.booleans(), st.text(max_size=10),
                         st.lists(scalars, max_size=2), st.dictionaries(st.text(max_size=3), scalars, max_size=2),
                         st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e39, -3.5e38,
                                          10**39, 10**5000]))
not_a_string = st.one_of(st.none(), st.just(""), st.booleans(), st.integers(), st.floats(),
                         st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))
valid_rows = st.lists(st.fixed_dictionaries({
    "temp": st.floats(-50, 60), "pressure": st.integers(900, 1100),
    "color": st.sampled_from(["red", "green", "blue", "mauve"]),
}), min_size=1, max_size=5)
json_types = st.sampled_from(["application/json", "application/json; charset=utf-8",
                              "application/json; charset=UTF-8"])
bad_types = st.one_of(
    st.sampled_from(["text/plain", "application/xml", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=x", "application/json; charset=latin-1",
                     "application/jsonx", "json", "*/*", "application/octet-stream"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
            max_size=30).filter(lambda t: not t.lower().startswith("application/json")),
)


def _dumps(obj: Any) -> bytes:
    try:
        return json.dumps(obj).encode()  # allow_nan: NaN / Infinity tokens on purpose
    except ValueError:  # huge int past str() limits: write it raw
        return b"[" + b"9" * 5000 + b"]"


@st.composite
def mutated_instances(draw: st.DrawFn) -> Any:
    rows = [dict(r) for r in draw(valid_rows)]
    row = rows[draw(st.integers(0, len(rows) - 1))]
    how = draw(st.sampled_from(["drop", "extra", "numeric", "string"]))
    if how == "drop":
        del row[draw(st.sampled_from(sorted(row)))]
    elif how == "extra":
        row[draw(st.text(max_size=8).filter(lambda k: k not in row))] = draw(scalars)
    elif how == "numeric":
        row[draw(st.sampled_from(NUMERIC))] = draw(not_a_number)
    else:
        row[draw(st.sampled_from(STRINGS))] = draw(not_a_string)
    return {"instances": rows}


@st.composite
def predict_cases(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["mutated", "mutated", "random", "shape", "bytes", "type",
                                 "nested", "batch", "huge"]))
    headers = {"Content-Type": draw(json_types)}
    if kind == "mutated":
        body = _dumps(draw(mutated_instances()))
    elif kind == "random":
        doc = draw(json_values)
        if isinstance(doc, dict):
            doc.pop("instances", None)
        body = _dumps(draw(st.sampled_from([doc, {"instances": doc if not isinstance(doc, list)
                                                  else [doc]}])))
    elif kind == "shape":
        body = _dumps(draw(st.sampled_from([[VALID_ROW], VALID_ROW, {"instances": []},
                                            {"instances": VALID_ROW}, {"instances": [[1, 2]]},
                                            {"instances": "rows"}, None, 3])))
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
    elif kind == "type":
        body = _dumps({"instances": [VALID_ROW]})
        headers = {"Content-Type": draw(bad_types)}
    elif kind == "nested":
        depth = draw(st.integers(1_000, 15_000))
        body = b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "batch":
        body = _dumps({"instances": [VALID_ROW] * draw(st.integers(MAX_BATCH + 1, MAX_BATCH + 50))})
    else:
        body = b'{"instances": [' + b" " * draw(st.integers(MAX_BODY, MAX_BODY + 100)) + b"]}"
    return body, headers


def _tensors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": k, "shape": [len(rows), 1], "datatype": "BYTES" if k in STRINGS else "FP32",
             "data": [r[k] for r in rows]} for k in rows[0]]


@st.composite
def infer_cases(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "random", "bytes", "type",
                                 "header", "nested", "batch"]))
    headers = {"Content-Type": draw(json_types)}
    doc: dict[str, Any] = {"inputs": _tensors(draw(valid_rows))}
    n = len(doc["inputs"][0]["data"])
    if kind == "mutated":
        t = doc["inputs"][draw(st.integers(0, 2))]
        how = draw(st.sampled_from(["drop", "unknown", "datatype", "shape", "data", "element",
                                    "id", "outputs", "parameters", "binary", "inputs"]))
        if how == "drop":
            doc["inputs"].remove(t)
        elif how == "unknown":
            doc["inputs"].append({**t, "name": draw(st.text(max_size=8).filter(
                lambda s: s not in VALID_ROW))})
        elif how == "datatype":
            t["datatype"] = draw(st.one_of(json_values, st.sampled_from(["BOOL", "FP8", "fp32"]))
                                 .filter(lambda d: d != t["datatype"] and not (
                                     t["datatype"] == "FP32" and d in ("FP64", "FP16", "INT8",
                                     "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                                     "UINT64"))))
        elif how == "shape":
            t["shape"] = draw(json_values.filter(lambda s: s not in ([n, 1], [n])))
        elif how == "data":
            t["data"] = draw(st.one_of(json_values.filter(lambda d: not isinstance(d, list)),
                                       st.lists(scalars, min_size=n + 1, max_size=n + 3)))
        elif how == "element":
            # (a one-item list would be valid OIP nesting: [[v]] is a [1, 1] tensor)
            t["data"][draw(st.integers(0, n - 1))] = draw(
                (not_a_string if t["name"] in STRINGS else not_a_number).filter(
                    lambda v: not (isinstance(v, list) and len(v) == 1)))
        elif how == "id":
            doc["id"] = draw(json_values.filter(lambda v: not isinstance(v, str) and v is not None))
        elif how == "outputs":
            doc["outputs"] = draw(st.one_of(
                json_values.filter(lambda v: not isinstance(v, list) and v is not None),
                st.lists(st.fixed_dictionaries({"name": st.text(max_size=8).filter(
                    lambda s: s not in ("label", "probabilities"))}), min_size=1, max_size=2)))
        elif how == "parameters":
            doc["parameters"] = draw(json_values.filter(
                lambda v: not isinstance(v, dict) and v is not None))
        elif how == "binary":
            t.pop("data")
            t["parameters"] = {"binary_data_size": draw(st.one_of(st.integers(0, 64), json_values))}
        else:
            doc["inputs"] = draw(json_values.filter(lambda v: not (isinstance(v, list) and v)))
        body = _dumps(doc)
    elif kind == "random":
        body = _dumps(draw(json_values))
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
    elif kind == "type":
        body = _dumps(doc)
        headers = {"Content-Type": draw(bad_types.filter(
            lambda t: t != "application/octet-stream"))}
    elif kind == "header":
        body = draw(st.binary(max_size=100)) + _dumps(doc)
        headers["Inference-Header-Content-Length"] = draw(st.one_of(
            st.integers(-5, 2 * len(body)).map(str), st.text(
                alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=5)))
    elif kind == "nested":
        depth = draw(st.integers(1_000, 15_000))
        body = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    else:
        rows = [VALID_ROW] * draw(st.integers(MAX_BATCH + 1, MAX_BATCH + 40))
        body = _dumps({"inputs": _tensors(rows)})
    return body, headers


def _assert_client_error(status: int, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:300])
    doc = json.loads(body)
    assert list(doc) == ["error"] and isinstance(doc["error"], str) and doc["error"]


# -- tests ----------------------------------------------------------------------------------------


@FUZZ
@given(case=predict_cases())
def test_v1_predict_answers_every_malformed_payload_with_a_4xx(
    client: Client, case: tuple[bytes, dict[str, str]]
) -> None:
    status, body = client.post("/v1/predict", *case)
    _assert_client_error(status, body)


@FUZZ
@given(case=infer_cases())
def test_oip_infer_answers_every_malformed_payload_with_a_4xx(
    client: Client, case: tuple[bytes, dict[str, str]]
) -> None:
    status, body = client.post("/v2/models/toy/infer", *case)
    _assert_client_error(status, body)


def test_the_server_still_serves_after_the_fuzzing(client: Client) -> None:
    status, body = client.post("/v1/predict", _dumps({"instances": [VALID_ROW]}),
                               {"Content-Type": "application/json"})
    assert status == 200
    assert json.loads(body)["predictions"][0]["label"] in ("cold", "mild", "hot")
    status, body = client.post("/v2/models/toy/infer", _dumps({"inputs": _tensors([VALID_ROW])}),
                               {})
    assert status == 200 and json.loads(body)["model_name"] == "toy"
    assert client.unexpected_drops == 0
