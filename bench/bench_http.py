"""HTTP requests/s and latency: edgeml's asyncio server vs Starlette + uvicorn vs the stdlib.

(b) ``POST /v1/predict`` at batch 1 and 64 under wrk (2 threads, 8 connections, a few
    seconds each, POST body from a Lua script), against the same model.onnx served by:

    edgeml      python -m edgeml.runtime.http BUNDLE (validation, statistics, everything on)
    starlette   bench/ref_app.py starlette: Starlette + uvicorn (uvloop, httptools) + ORT
    threading   bench/ref_app.py threading: http.server.ThreadingHTTPServer + TCP_NODELAY + ORT

All servers run onnxruntime with one intra-op thread. Servers are measured in turn, round
after round (the order rotates), and the medians over rounds are reported with the server's
CPU time per request (from /proc, less sensitive to a noisy machine than requests/s).
Targets: edgeml >= 0.65x Starlette's requests/s, p99 <= 2 ms, at batch 1 and 64.

    python bench/bench_http.py [--bundle PATH] [--duration 4] [--rounds 3]

Needs wrk (Debian: apt-get install wrk). Without --bundle, the penguins recipe is trained and
packaged under /tmp/edgeml-bench (shared with bench_predictor.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TICK = os.sysconf("SC_CLK_TCK")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(port: int, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    def __init__(self, name: str, argv: list[str], port: int) -> None:
        self.name, self.port = name, port
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def wait(self, body: bytes) -> bytes:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, answer = post(self.port, body)
                if status == 200:
                    return answer
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not come up")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime, all threads

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def lua_script(body: bytes, folder: Path, name: str) -> Path:
    path = folder / f"{name}.lua"
    path.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = [==[{body.decode()}]==]\n")
    return path


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def run_wrk(server: Server, script: Path, duration: float, threads: int,
            connections: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{server.port}/v1/predict"
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s",
           str(script), url]
    subprocess.run([*cmd[:3], "-d1s", *cmd[4:]], capture_output=True, check=True)  # warm up
    cpu0 = server.cpu_seconds()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = server.cpu_seconds() - cpu0
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"{server.name}: wrk saw errors:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "cpu_us": cpu / max(requests, 1) * 1e6,
    }


def default_bundle() -> Path:
    sys.path.insert(0, str(HERE))
    from bench_predictor import build

    built = build(["penguins"], Path("/tmp/edgeml-bench"))
    if not built:
        raise SystemExit("could not build the penguins bundle")
    return built[0][1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batches", default="1,64")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    bundle = args.bundle or default_bundle()
    with zipfile.ZipFile(bundle) as zf:
        rows = json.loads(zf.read("selftest.json"))["rows"]
    py = sys.executable
    specs = {
        "edgeml": [py, "-m", "edgeml.runtime.http", str(bundle), "--threads", "1", "--port"],
        "starlette": [py, str(HERE / "ref_app.py"), "starlette", str(bundle)],
        "threading": [py, str(HERE / "ref_app.py"), "threading", str(bundle)],
    }
    servers = []
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            bodies = {}
            for batch in [int(b) for b in args.batches.split(",")]:
                instances = [rows[i % len(rows)] for i in range(batch)]
                bodies[batch] = json.dumps({"instances": instances}).encode()
            for name, argv_ in specs.items():
                port = free_port()
                servers.append(Server(name, [*argv_, str(port)], port))
            first = bodies[min(bodies)]
            answers = {s.name: json.loads(s.wait(first))["predictions"] for s in servers}
            labels = {n: [p["label"] for p in a] for n, a in answers.items()}
            assert len({json.dumps(v) for v in labels.values()}) == 1, labels
            for batch, body in bodies.items():
                script = lua_script(body, Path(tmp), f"batch{batch}")
                for r in range(args.rounds):
                    order = servers[r % len(servers):] + servers[:r % len(servers)]
                    for server in order:
                        log(f"batch {batch} round {r + 1}: {server.name}")
                        results.setdefault((batch, server.name), []).append(
                            run_wrk(server, script, args.duration, args.threads,
                                    args.connections))
        finally:
            for server in servers:
                server.stop()

    print(f"\n(b) POST /v1/predict, wrk -t{args.threads} -c{args.connections} "
          f"-d{args.duration:g}s, median of {args.rounds} rounds; bundle {bundle.name}")
    print(f"{'batch':>5}  {'server':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/req':>12}"
          f"{'vs starlette':>14}")
    verdicts = []
    for batch in bodies:
        med = {name: {k: statistics.median(run[k] for run in results[(batch, name)])
                      for k in ("rps", "p50", "p99", "cpu_us")} for name in specs}
        base = med["starlette"]["rps"]
        for name in specs:
            m = med[name]
            print(f"{batch:>5}  {name:<10}{m['rps']:>9.0f}{m['p50']:>9.2f}{m['p99']:>9.2f}"
                  f"{m['cpu_us']:>12.0f}{m['rps'] / base:>13.2f}x")
        e = med["edgeml"]
        verdicts.append(f"batch {batch}: {e['rps'] / base:.2f}x starlette "
                        f"[{'ok' if e['rps'] / base >= 0.65 else 'MISSED'}], p99 {e['p99']:.2f} ms "
                        f"[{'ok' if e['p99'] <= 2.0 else 'MISSED'}]")
    print("\ntargets (edgeml >= 0.65x starlette req/s, p99 <= 2 ms): " + "; ".join(verdicts))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
