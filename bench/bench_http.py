"""HTTP requests/s and latency on the same cores: ``edgeml serve`` vs Starlette + uvicorn.

(b) ``POST /v1/predict`` at batch 1 and 64 under wrk (keep-alive connections, POST body from a
    Lua script), against the same model.onnx and the same body, served by:

    edgeml      python -m edgeml serve BUNDLE --port P, its default settings (everything on:
                validation, statistics; workers and threads as the defaults choose them)
    starlette   bench/ref_app.py starlette: Starlette + uvicorn (uvloop, httptools) + ORT
    threading   bench/ref_app.py threading: ThreadingHTTPServer + TCP_NODELAY + ORT (opt-in)

Fair by construction: every thread of every server (onnxruntime's own pool included, which
sets its own affinity and so escapes ``taskset``) is confined to the same CPU set with
``os.sched_setaffinity`` after start-up and again before each measurement; each server's
``/proc/PID/task/*/status`` ``Cpus_allowed_list`` is read back after each measurement and
printed, and the run fails if any thread left the set. wrk runs on the other core(s).

    one-core    every server on core A, wrk on core B: edgeml (defaults) vs the references
    workers     ``edgeml serve --workers 1`` vs ``--workers 2``, both servers on cores A+B
                (a 2-core machine has no third core: wrk shares them)

Servers are measured in turn, round after round (the order rotates), and medians over rounds
are reported with the server's CPU time per request (from /proc). Targets: edgeml >= 1.0x
Starlette's requests/s at batch 1 and 64 with p99 no worse than Starlette's in the same run.

    python bench/bench_http.py [--bundle PATH] [--duration 2] [--rounds 3]
                               [--scenarios one-core,workers] [--servers edgeml,starlette]

Needs wrk (Debian: apt-get install wrk) and at least 2 cores. Without --bundle, the penguins
recipe is trained and packaged under /tmp/edgeml-bench (shared with bench_predictor.py).
"""

from __future__ import annotations

import argparse
import contextlib
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


def cpu_list(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def parse_cpu_list(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


class Server:
    """A server process started under ``taskset``, all of whose threads are kept on ``cpus``."""

    def __init__(self, name: str, argv: list[str], port: int, cpus: set[int]) -> None:
        self.name, self.port, self.cpus = name, port, cpus
        self.proc = subprocess.Popen(["taskset", "-c", cpu_list(cpus), *argv], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait(self, body: bytes) -> bytes:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                status, answer = post(self.port, body)
                if status == 200:
                    return answer
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not come up")

    def tasks(self) -> list[str]:
        return sorted(os.listdir(f"/proc/{self.proc.pid}/task"))

    def pin(self) -> None:
        """Confine every thread (onnxruntime pins its pool threads itself) to ``cpus``."""
        for tid in self.tasks():
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # thread ended
                os.sched_setaffinity(int(tid), self.cpus)

    def affinity(self) -> dict[str, set[int]]:
        """Cpus_allowed_list of each thread, read back from /proc/PID/task/*/status."""
        out = {}
        for tid in self.tasks():
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/status") as fh:
                    status = dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
            except FileNotFoundError:
                continue
            out[f"{tid}:{status.get('Name', '?')}"] = parse_cpu_list(status["Cpus_allowed_list"])
        return out

    def check_affinity(self) -> str:
        threads = self.affinity()
        outside = {t: c for t, c in threads.items() if not c <= self.cpus}
        if outside:
            raise RuntimeError(f"{self.name}: threads outside CPU set {cpu_list(self.cpus)}: "
                               f"{outside}")
        sets = sorted({cpu_list(c) for c in threads.values()})
        return f"{self.name}: {len(threads)} threads, Cpus_allowed_list {' | '.join(sets)}"

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


def run_wrk(server: Server, script: Path, args: argparse.Namespace,
            wrk_cpus: set[int] | None) -> dict[str, float]:
    url = f"http://127.0.0.1:{server.port}/v1/predict"
    pin = ["taskset", "-c", cpu_list(wrk_cpus)] if wrk_cpus else []
    cmd = [*pin, "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration:g}s",
           "--latency", "-s", str(script), url]
    server.pin()
    warm = [c if not c.startswith("-d") else "-d1s" for c in cmd]
    subprocess.run(warm, capture_output=True, check=True)
    server.pin()
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


def measure(specs: dict[str, list[str]], cpus: set[int], wrk_cpus: set[int] | None,
            bodies: dict[int, bytes], args: argparse.Namespace, tmp: Path,
            ) -> dict[tuple[int, str], dict[str, float]]:
    """Start every server on ``cpus``, run the rounds, return medians by (batch, server)."""
    servers: list[Server] = []
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    try:
        for name, argv_ in specs.items():
            port = free_port()
            servers.append(Server(name, [*argv_, str(port)], port, cpus))
        first = bodies[min(bodies)]
        answers = {s.name: json.loads(s.wait(first))["predictions"] for s in servers}
        labels = {n: [p["label"] for p in a] for n, a in answers.items()}
        assert len({json.dumps(v) for v in labels.values()}) == 1, labels
        for server in servers:
            server.pin()
        for batch, body in bodies.items():
            script = lua_script(body, tmp, f"batch{batch}")
            for r in range(args.rounds):
                order = servers[r % len(servers):] + servers[:r % len(servers)]
                for server in order:
                    log(f"  batch {batch} round {r + 1}: {server.name}")
                    results.setdefault((batch, server.name), []).append(
                        run_wrk(server, script, args, wrk_cpus))
                    log("    " + server.check_affinity())
        for server in servers:
            print("  " + server.check_affinity())
    finally:
        for server in servers:
            server.stop()
    return {key: {k: statistics.median(run[k] for run in runs) for k in runs[0]}
            for key, runs in results.items()}


def table(med: dict[tuple[int, str], dict[str, float]], names: list[str], base: str,
          bodies: dict[int, bytes]) -> None:
    print(f"{'batch':>5}  {'server':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/req':>12}"
          f"{'vs ' + base:>16}")
    for batch in bodies:
        for name in names:
            m = med[(batch, name)]
            print(f"{batch:>5}  {name:<12}{m['rps']:>9.0f}{m['p50']:>9.2f}{m['p99']:>9.2f}"
                  f"{m['cpu_us']:>12.0f}{m['rps'] / med[(batch, base)]['rps']:>15.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--scenarios", default="one-core,workers")
    parser.add_argument("--servers", default="edgeml,starlette",
                        help="one-core contenders: edgeml, starlette, threading")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise SystemExit("wrk and taskset are needed (Debian: apt-get install wrk util-linux)")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("needs at least 2 cores: one for the servers, one for wrk")
    bundle = args.bundle or default_bundle()
    with zipfile.ZipFile(bundle) as zf:
        rows = json.loads(zf.read("selftest.json"))["rows"]
    bodies = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        bodies[batch] = json.dumps({"instances": [rows[i % len(rows)]
                                                  for i in range(batch)]}).encode()
    py = sys.executable
    edgeml = [py, "-m", "edgeml", "serve", str(bundle), "--log-level", "warning"]
    refs = {"starlette": [py, str(HERE / "ref_app.py"), "starlette", str(bundle)],
            "threading": [py, str(HERE / "ref_app.py"), "threading", str(bundle)]}
    scenarios = args.scenarios.split(",")
    wrk_desc = f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s"
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        if "one-core" in scenarios:
            server_cpus, wrk_cpus = {cores[0]}, set(cores[1:])
            names = args.servers.split(",")
            specs = {n: ([*edgeml, "--port"] if n == "edgeml" else refs[n]) for n in names}
            log(f"one-core: servers on CPU {cpu_list(server_cpus)}, wrk on {cpu_list(wrk_cpus)}")
            print(f"\n(b1) every thread of each server on CPU {cpu_list(server_cpus)}, wrk on CPU "
                  f"{cpu_list(wrk_cpus)}; {wrk_desc}, median of {args.rounds} rounds; "
                  f"bundle {bundle.name}; edgeml serve with its default settings")
            med = measure(specs, server_cpus, wrk_cpus, bodies, args, Path(tmp))
            if "starlette" in names and "edgeml" in names:
                table(med, names, "starlette", bodies)
                for batch in bodies:
                    e, s = med[(batch, "edgeml")], med[(batch, "starlette")]
                    ratio = e["rps"] / s["rps"]
                    verdicts.append(
                        f"batch {batch}: {ratio:.2f}x starlette [{'ok' if ratio >= 1.0 else 'MISSED'}]"
                        f", p99 {e['p99']:.2f} vs {s['p99']:.2f} ms "
                        f"[{'ok' if e['p99'] <= s['p99'] else 'MISSED'}]")
            else:
                table(med, names, names[0], bodies)
        if "workers" in scenarios:
            server_cpus = set(cores[:2])
            specs = {f"workers={n}": [*edgeml, "--workers", str(n), "--port"] for n in (1, 2)}
            log(f"workers: servers on CPUs {cpu_list(server_cpus)}, wrk unpinned")
            print(f"\n(b2) edgeml serve --workers 1 vs 2, every thread on CPUs "
                  f"{cpu_list(server_cpus)} (wrk shares them); {wrk_desc}, median of "
                  f"{args.rounds} rounds")
            med = measure(specs, server_cpus, None, bodies, args, Path(tmp))
            table(med, list(specs), "workers=1", bodies)
            for batch in bodies:
                ratio = med[(batch, "workers=2")]["rps"] / med[(batch, "workers=1")]["rps"]
                verdicts.append(f"batch {batch}: 2 workers {ratio:.2f}x 1 worker")
    if verdicts:
        print("\ntargets (edgeml >= 1.0x starlette req/s, p99 <= starlette's, same core): "
              + "; ".join(verdicts))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
