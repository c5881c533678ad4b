"""The HTTP API: Open Inference Protocol v2, ``/v1/predict`` and ``/metrics`` (device-safe).

:class:`App` is the request handler that :mod:`edgeml.runtime.http` serves. Routes::

    GET  /v2/health/live                                 {"live": true}
    GET  /v2/health/ready                                {"ready": true}
    GET  /v2                                             server metadata
    GET  /v2/models/{name}[/versions/{v}]                model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready          {"name", "ready": true}
    POST /v2/repository/index                            [{"name", "version", "state": "READY"}]
    POST /v2/models/{name}[/versions/{v}]/infer          OIP inference (JSON, or binary tensors)
    POST /v1/predict                                     {"instances": [{feature: value}]}
    GET  /metrics                                        Prometheus text format 0.0.4

Errors are ``{"error": "..."}`` with 400 (bad request or input), 404 (route, model or
version), 405 (method, with ``Allow``), 413 (body or batch too large), 415 (content type);
anything unexpected is logged and answered 500 with a generic message. The binary tensor
data extension (``Inference-Header-Content-Length``; what ``tritonclient.http`` sends and
asks for by default) is supported for inputs and outputs, see :mod:`edgeml.runtime.tensors`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from edgeml import __version__
from edgeml.errors import InputError
from edgeml.runtime.http_protocol import Request, Response, json_error
from edgeml.runtime.prediction import ANOMALY, NORMAL, Prediction
from edgeml.runtime.predictor import Predictor
from edgeml.runtime.stats import PROMETHEUS_CONTENT_TYPE, RuntimeStats
from edgeml.runtime.tensors import TensorError, encode_outputs, parse_inputs

__all__ = ["EXTENSIONS", "App", "HttpError"]

log = logging.getLogger("edgeml.runtime.http")

EXTENSIONS = ["binary_tensor_data"]
_JSON = b"application/json"
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_LIVE = b'{"live":true}'
_READY = b'{"ready":true}'

# endpoint labels for statistics (a fixed set: never raw paths)
E_PREDICT = "/v1/predict"
E_INFER = "/v2/models/{model}/infer"
E_MODEL = "/v2/models/{model}"
E_MODEL_READY = "/v2/models/{model}/ready"
E_LIVE = "/v2/health/live"
E_READY = "/v2/health/ready"
E_SERVER = "/v2"
E_METRICS = "/metrics"
E_REPOSITORY = "/v2/repository/index"
E_OTHER = "other"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (send null for a missing value)")


_DECODE = json.JSONDecoder(parse_constant=_reject_constant).decode


class HttpError(Exception):
    """An answer other than 200, raised inside a handler. ``kind`` labels the error counter."""

    def __init__(self, status: int, message: str, kind: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = headers


def _method_not_allowed(allowed: str) -> HttpError:
    return HttpError(405, f"method not allowed (allowed: {allowed})", "method",
                     [(b"Allow", allowed.encode())])


class App:
    """Routes requests for one model. Synchronous: small models answer in microseconds."""

    def __init__(self, predictor: Predictor, stats: RuntimeStats, *, max_batch: int = 1024) -> None:
        self.predictor = predictor
        self.stats = stats
        self.max_batch = max_batch
        m = predictor.manifest
        self.name = m.name
        self.version = str(m.version)
        self._model_suffix = b',"model":' + _ENCODE({"name": m.name, "version": m.version}).encode() + b"}"
        self._metadata = _ENCODE(predictor.metadata()).encode()
        self._server = _ENCODE({"name": "edgeml", "version": __version__,
                                "extensions": EXTENSIONS}).encode()
        self._model_ready = _ENCODE({"name": m.name, "ready": True}).encode()
        self._gets = {E_LIVE: _LIVE, E_READY: _READY, E_SERVER: self._server}
        # the model repository extension's index (Triton, MLServer): how clients find the name
        self._index = _ENCODE([{"name": m.name, "version": str(m.version), "state": "READY"}]
                              ).encode()
        self.encode_rows = RowsEncoder(predictor.task, predictor.classes,
                                       any(t.role == "probabilities" for t in predictor.output_tensors))

    # -- dispatch ---------------------------------------------------------------------

    def __call__(self, request: Request) -> Response:
        path = request.path
        if len(path) > 1 and path[-1] == "/":
            path = path.rstrip("/") or "/"
        endpoint = E_OTHER
        try:
            if path == E_PREDICT:
                endpoint = E_PREDICT
                if request.method != "POST":
                    raise _method_not_allowed("POST")
                return self._predict(request)
            if path.startswith("/v2/models/"):
                endpoint, version, action = self._model_route(path)
                self._check_version(version)
                if action == "infer":
                    if request.method != "POST":
                        raise _method_not_allowed("POST")
                    return self._infer(request)
                if request.method not in ("GET", "HEAD"):
                    raise _method_not_allowed("GET, HEAD")
                self.stats.record_request(endpoint)
                return Response(200, self._model_ready if action == "ready" else self._metadata)
            if path == E_REPOSITORY:
                endpoint = E_REPOSITORY
                return self._repository_index(request)
            body = self._gets.get(path)
            if body is not None or path == E_METRICS:
                endpoint = path
                if request.method not in ("GET", "HEAD"):
                    raise _method_not_allowed("GET, HEAD")
                self.stats.record_request(endpoint)
                if body is None:
                    text = self.stats.prometheus_text().encode()
                    return Response(200, text, PROMETHEUS_CONTENT_TYPE.encode())
                return Response(200, body)
            raise HttpError(404, f"not found: {path[:200]}", "not_found")
        except HttpError as exc:
            self.stats.record_error(endpoint, exc.kind)
            return json_error(exc.status, exc.message, exc.headers)
        except InputError as exc:
            self.stats.record_error(endpoint, "input")
            return json_error(400, str(exc))
        except Exception:
            log.exception("unexpected error handling %s %s", request.method, path[:200])
            self.stats.record_error(endpoint, "internal")
            return json_error(500, "internal server error")

    def _model_route(self, path: str) -> tuple[str, str | None, str | None]:
        parts = path[len("/v2/models/"):].split("/")
        name, rest = parts[0], parts[1:]
        version: str | None = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        action = rest[0] if len(rest) == 1 and rest[0] in ("infer", "ready") else None
        if len(rest) > 1 or (rest and action is None) or not name or version == "":
            raise HttpError(404, f"not found: {path[:200]}", "not_found")
        endpoint = {"infer": E_INFER, "ready": E_MODEL_READY}.get(action or "", E_MODEL)
        if name != self.name:
            raise HttpError(404, f"unknown model {name[:100]!r} (this server serves {self.name!r})",
                            "not_found")
        return endpoint, version, action

    def _check_version(self, version: str | None) -> None:
        if version is not None and version != self.version:
            raise HttpError(404, f"unknown version {version[:40]!r} of model {self.name!r} "
                                 f"(available: {self.version})", "not_found")

    def _repository_index(self, request: Request) -> Response:
        """``POST /v2/repository/index`` with an optional ``{"ready": bool}``: this one model."""
        if request.method != "POST":
            raise _method_not_allowed("POST")
        if request.body.strip():
            self._media(request, binary_ok=False)
            doc = self._json(request.body)
            if type(doc) is not dict or type(doc.get("ready", False)) is not bool:
                raise HttpError(400, 'expected {"ready": true|false} or an empty body', "input")
        self.stats.record_request(E_REPOSITORY)
        return Response(200, self._index)

    # -- bodies -----------------------------------------------------------------------

    @staticmethod
    def _media(request: Request, binary_ok: bool) -> None:
        """Accept JSON (any charset spelling of UTF-8), no type at all, or binary tensors."""
        ctype = request.headers.get("content-type")
        if ctype is None:
            return
        media, _, params = ctype.partition(";")
        media = media.strip().lower()
        if media == "application/json":
            for param in params.split(";"):
                key, _, value = param.partition("=")
                if key.strip().lower() == "charset" and \
                        value.strip().strip('"').lower() not in ("utf-8", "utf8"):
                    raise HttpError(415, f"unsupported charset {value.strip()[:40]!r}: send UTF-8",
                                    "content_type")
            return
        if binary_ok and media == "application/octet-stream":
            return
        raise HttpError(415, f"unsupported content type {media[:60]!r}: send application/json",
                        "content_type")

    @staticmethod
    def _json(body: bytes) -> Any:
        if not body:
            raise HttpError(400, "request body is empty: send a JSON object", "json")
        try:
            return _DECODE(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise HttpError(400, "request body is not valid UTF-8", "json") from None
        except RecursionError:
            raise HttpError(400, "invalid JSON: nested too deeply", "json") from None
        except ValueError as exc:  # JSONDecodeError, NaN/Infinity, huge integers
            raise HttpError(400, f"invalid JSON: {str(exc)[:200]}", "json") from None

    def _rows(self, n: int) -> None:
        if n == 0:
            raise HttpError(400, "empty batch: send at least one row", "input")
        if n > self.max_batch:
            raise HttpError(413, f"batch of {n} rows exceeds the limit of {self.max_batch} rows",
                            "too_large")

    # -- POST /v1/predict --------------------------------------------------------------

    def _predict(self, request: Request) -> Response:
        start = time.perf_counter()
        self._media(request, binary_ok=False)
        doc = self._json(request.body)
        if type(doc) is not dict:
            raise HttpError(400, 'expected a JSON object {"instances": [{feature: value, ...}]}',
                            "input")
        instances = doc.get("instances")
        if type(instances) is not list:
            what = "missing" if instances is None else "must be a list of objects"
            raise HttpError(400, f'"instances" {what}: send {{"instances": [{{feature: value}}]}}',
                            "input")
        self._rows(len(instances))
        predictor = self.predictor
        feeds = predictor.feeds(instances)
        prediction = predictor.run(feeds)
        body = b'{"predictions":' + self.encode_rows(prediction) + self._model_suffix
        self.stats.record(E_PREDICT, time.perf_counter() - start, feeds, prediction)
        return Response(200, body)

    # -- POST /v2/models/{name}/infer -------------------------------------------------

    def _infer(self, request: Request) -> Response:
        start = time.perf_counter()
        self._media(request, binary_ok=True)
        body = request.body
        header_length = request.headers.get("inference-header-content-length")
        binary = b""
        if header_length is not None:
            if not (header_length.isascii() and header_length.isdigit()) or \
                    int(header_length) > len(body):
                raise HttpError(400, "invalid Inference-Header-Content-Length", "input")
            split = int(header_length)
            body, binary = body[:split], body[split:]
        doc = self._json(body)
        if type(doc) is not dict:
            raise HttpError(400, 'expected an inference request object {"inputs": [...]}', "input")
        request_id = doc.get("id")
        if request_id is not None and type(request_id) is not str:
            raise HttpError(400, '"id" must be a string', "input")
        params = doc.get("parameters")
        if params is not None and type(params) is not dict:
            raise HttpError(400, '"parameters" must be an object', "input")
        try:
            columns, rows = parse_inputs(doc.get("inputs"), self.predictor.request_inputs, binary)
            self._rows(rows)
            predictor = self.predictor
            feeds = predictor.feeds(columns)
            prediction = predictor.run(feeds)
            header, blobs = encode_outputs(prediction, predictor.output_tensors,
                                           doc.get("outputs"), params or {})
        except TensorError as exc:
            raise HttpError(400, str(exc), "input") from None
        answer: dict[str, Any] = {"model_name": self.name, "model_version": self.version}
        if request_id is not None:
            answer["id"] = request_id
        answer["outputs"] = header
        text = _encode(answer)
        self.stats.record(E_INFER, time.perf_counter() - start, feeds, prediction)
        if not blobs:
            return Response(200, text)
        extra = [(b"Inference-Header-Content-Length", str(len(text)).encode())]
        return Response(200, text + b"".join(blobs), b"application/octet-stream", extra)


class RowsEncoder:
    """``Prediction.rows()`` as JSON bytes, fast: one precompiled ``%`` template per row.

    The output is byte for byte what the JSON encoder makes of ``rows()`` (floats use the
    same ``repr``); anything non-finite takes the generic path, which writes null.
    """

    def __init__(self, task: str, classes: list[str] | None, probabilities: bool) -> None:
        self.task = task
        self.template: str | None = None
        self._labels: dict[str, str] = {}
        if task == "classification" and classes and probabilities:
            pairs = ",".join(f"{_ENCODE(c).replace('%', '%%')}:%r" for c in classes)
            self.template = '{"label":%s,"probabilities":{' + pairs + "}}"
        elif task == "regression":
            self.template = '{"prediction":%r}'
        elif task == "anomaly":
            self.template = '{"label":%s,"score":%r}'

    def _label(self, label: str) -> str:
        text = self._labels.get(label)
        if text is None:
            text = _ENCODE(label).replace("%", "%%") if len(self._labels) < 1024 else None
            if text is None:
                return _ENCODE(label)
            self._labels[label] = text
        return text

    def __call__(self, prediction: Prediction) -> bytes:
        template = self.template
        if template is None:
            return _encode(prediction.rows())
        if self.task == "regression":
            values = prediction.values
            if values is None or not np.isfinite(values).all():
                return _encode(prediction.rows())
            rows = [template % v for v in values.tolist()]
        elif self.task == "classification":
            probs = prediction.probabilities
            if probs is None or not np.isfinite(probs).all():
                return _encode(prediction.rows())
            label = self._label
            rows = [template % (label(lab), *p)
                    for lab, p in zip(prediction.labels or [], probs.tolist(), strict=True)]
        else:
            scores = prediction.scores
            if scores is None or not np.isfinite(scores).all():
                return _encode(prediction.rows())
            names = {ANOMALY: '"anomaly"', NORMAL: '"normal"'}
            rows = [template % (names[lab], s)
                    for lab, s in zip(prediction.labels or [], scores.tolist(), strict=True)]
        return ("[" + ",".join(rows) + "]").encode()


def _encode(obj: Any) -> bytes:
    """Compact JSON; non-finite model outputs (never valid JSON) become null."""
    try:
        return _ENCODE(obj).encode()
    except ValueError:
        return json.dumps(_finite(obj), separators=(",", ":")).encode()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
