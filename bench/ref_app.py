"""Reference servers for bench_http.py: the same model.onnx behind other HTTP stacks.

    python bench/ref_app.py starlette BUNDLE PORT   # Starlette + uvicorn (uvloop, httptools)
    python bench/ref_app.py threading BUNDLE PORT   # stdlib ThreadingHTTPServer, TCP_NODELAY

Each serves ``POST /v1/predict`` with ``{"instances": [{feature: value}]}`` and answers
``{"predictions": [{"label", "probabilities"}], "model": {...}}`` like edgeml does, with
the minimum of work: no validation beyond what numpy does, no statistics. It reads
model.onnx and the manifest straight from the bundle zip (it does not import edgeml).
"""

from __future__ import annotations

import json
import socket
import sys
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import onnxruntime as ort


def load(bundle: str) -> tuple[Any, dict[str, Any]]:
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        model = zf.read("model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]), manifest


def make_predict(bundle: str) -> Any:
    sess, manifest = load(bundle)
    inputs = [(i["name"], i["dtype"]) for i in manifest["inputs"]]
    outputs = manifest["outputs"]
    classes = outputs.get("classes")
    model = {"name": manifest["name"], "version": manifest["version"]}
    task = manifest["task"]

    def predict(doc: dict[str, Any]) -> dict[str, Any]:
        rows = doc["instances"]
        feeds = {
            name: np.array([[r[name]] for r in rows], dtype=object if dtype == "string" else np.float32)
            for name, dtype in inputs
        }
        res = sess.run(None, feeds)
        if task == "classification":
            preds = [{"label": str(lab), "probabilities": dict(zip(classes, p, strict=False))}
                     for lab, p in zip(res[0].reshape(-1).tolist(), res[1].tolist(), strict=False)]
        elif task == "regression":
            preds = [{"prediction": v} for v in res[0].reshape(-1).tolist()]
        else:
            preds = [{"label": "anomaly" if lab == -1 else "normal", "score": s}
                     for lab, s in zip(res[0].reshape(-1).tolist(), res[1].reshape(-1).tolist(), strict=False)]
        return {"predictions": preds, "model": model}

    return predict


def run_starlette(bundle: str, port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    predict = make_predict(bundle)

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(predict(await request.json()))

    app = Starlette(routes=[Route("/v1/predict", endpoint, methods=["POST"])])
    print(f"ref: starlette on {port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def run_threading(bundle: str, port: int) -> None:
    predict = make_predict(bundle)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.dumps(predict(json.loads(self.rfile.read(length)))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"ref: threading on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    kind, bundle_path, port_arg = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"starlette": run_starlette, "threading": run_threading}[kind](bundle_path, port_arg)
