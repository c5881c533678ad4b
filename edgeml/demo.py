"""``make demo``: the whole edge workflow, end to end, on the penguins recipe.

Runs the real commands a user would type, in order: train, package for two targets,
verify both bundles, then serve one on loopback with telemetry to the embedded MQTT
broker, send predictions over HTTP and MQTT, and print what arrived on the telemetry
topics. Everything is written under ``build/demo/`` (re-created on each run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "demo"
RECIPE = ROOT / "models" / "penguins.yaml"
TARGETS = ("x86_64", "rpi4")
FLEET = "demo"
DEVICE = "penguin-cam-1"

console = Console()

ROWS = [
    {"island": "Biscoe", "bill_length_mm": 47.0, "bill_depth_mm": 14.5,
     "flipper_length_mm": 215.0, "body_mass_g": 5400.0, "sex": "male"},
    {"island": "Dream", "bill_length_mm": 41.5, "bill_depth_mm": 18.5,
     "flipper_length_mm": 201.0, "body_mass_g": 4000.0, "sex": None},
    {"island": "Dream", "bill_length_mm": 50.9, "bill_depth_mm": 19.1,
     "flipper_length_mm": 196.0, "body_mass_g": 3550.0, "sex": "male"},
]


def edgeml(*args: str) -> None:
    """Run an edgeml command as a user would, echoing it; stop the demo if it fails."""
    console.print(f"[bold cyan]$ edgeml {' '.join(args)}[/]")
    done = subprocess.run([sys.executable, "-m", "edgeml", *args], cwd=ROOT, check=False)
    if done.returncode != 0:
        console.print(f"[red]edgeml {args[0]} failed with exit code {done.returncode}[/]")
        sys.exit(done.returncode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def post_json(url: str, body: Any) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def serve_and_watch(bundle: Path) -> None:
    import paho.mqtt.client as mqtt

    from edgeml.runtime import topics

    broker_port, http_port = free_port(), free_port()
    spool = OUT / "spool"
    procs: list[subprocess.Popen[bytes]] = []
    received: list[tuple[str, str]] = []
    replies: list[Any] = []
    root = topics.DeviceTopics.create("edgeml", FLEET, DEVICE)
    reply_topic = f"demo/replies/{uuid.uuid4().hex[:8]}"
    try:
        console.print(f"[bold cyan]$ edgeml broker --port {broker_port}[/]  (embedded, in the background)")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "edgeml", "broker", "--port", str(broker_port)], cwd=ROOT))
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgeml-demo-watcher",
                             protocol=mqtt.MQTTv311)
        wait_for(lambda: _connects(client, broker_port), 20, "the embedded broker")

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            text = msg.payload.decode(errors="replace")
            if msg.topic == reply_topic:
                replies.append(json.loads(text))
            else:
                received.append((msg.topic, text))

        client.on_message = on_message
        client.subscribe(topics.fleet_filter("edgeml", FLEET), qos=1)
        client.subscribe(reply_topic, qos=1)
        client.loop_start()

        args = ["serve", str(bundle), "--port", str(http_port),
                "--broker", f"mqtt://127.0.0.1:{broker_port}", "--fleet", FLEET,
                "--device-id", DEVICE, "--metrics-interval", "1", "--sample-rate", "1",
                "--spool", str(spool)]
        console.print(f"[bold cyan]$ edgeml {' '.join(args)}[/]  (in the background)")
        procs.append(subprocess.Popen([sys.executable, "-m", "edgeml", *args], cwd=ROOT))
        url = f"http://127.0.0.1:{http_port}"
        wait_for(lambda: http_ready(url), 60, "edgeml serve")
        wait_for(lambda: any(t == root.state and p == "ready" for t, p in received), 30,
                 "the device's $state ready")

        console.print(Rule("predictions over HTTP (POST /v1/predict)"))
        answer = post_json(url + "/v1/predict", {"instances": ROWS})
        for row, pred in zip(ROWS, answer["predictions"], strict=True):
            best = max(pred["probabilities"].values())
            console.print(f"  {row['island']:7} bill {row['bill_length_mm']} mm -> "
                          f"[bold]{pred['label']}[/] (p={best:.3f})")

        console.print(Rule("prediction over MQTT (request on .../infer, reply on our topic)"))
        client.publish(root.infer, json.dumps({"instances": ROWS[:1], "reply_to": reply_topic,
                                               "correlation_id": "demo-1"}), qos=1)
        wait_for(lambda: bool(replies), 15, "the MQTT inference reply")
        console.print(f"  reply: {json.dumps(replies[0])[:200]}")

        wait_for(lambda: any(t == root.metrics for t, _ in received), 15, "a metrics message")
        time.sleep(1.5)
        console.print(Rule("what arrived on the telemetry topics"))
        seen: dict[str, str] = {}
        for topic, payload in received:
            if topic == root.metrics and topic in seen:
                continue  # the first window is the one that holds the requests above
            seen[topic] = payload  # the latest of each other topic
        for topic, payload in sorted(seen.items()):
            count = sum(1 for t, _ in received if t == topic)
            console.print(f"  [green]{topic}[/] x{count}: {_summary(payload)}")
        store_fleet(received)
        client.loop_stop()
        client.disconnect()
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def store_fleet(received: list[tuple[str, str]]) -> None:
    """Store what arrived as `edgeml monitor` does (its ingest and writer) in a SQLite file:
    the monitor itself needs an MQTT v5 broker (Mosquitto), the embedded one speaks 3.1.1."""
    from edgeml.fleet.db import open_store
    from edgeml.fleet.ingest import classify
    from edgeml.fleet.migrate import upgrade
    from edgeml.fleet.writer import Item, Writer

    url = f"sqlite:///{OUT / 'fleet.db'}"
    upgrade(url)
    store = open_store(url)
    items = [Item(t, p.encode(), classify("edgeml", t, p.encode())) for t, p in received]
    Writer(store).write([i for i in items if i.result is not None])
    store.dispose()
    DASHBOARD.append(url)


DASHBOARD: list[str] = []


def _connects(client: Any, port: int) -> bool:
    try:
        client.connect("127.0.0.1", port)
    except OSError:
        return False
    return True


def _summary(payload: str) -> str:
    try:
        obj = json.loads(payload)
    except ValueError:
        return payload[:80]
    if not isinstance(obj, dict):
        return payload[:80]
    if str(obj.get("schema", "")).startswith("edgeml.metrics/"):
        lat = obj.get("latency_ms") or {}
        return (f"seq {obj.get('seq')}, {obj.get('rows')} rows, p50 {float(lat.get('p50') or 0):.2f} ms, "
                f"predictions {json.dumps(obj.get('predictions'))[:80]}")
    keys = ", ".join(list(obj)[:8])
    return f"{obj.get('schema', 'json')} {{{keys}, ...}}"


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    registry, bundles = OUT / "registry", OUT / "bundles"
    os.environ["EDGEML_REGISTRY"] = str(registry)

    console.print(Rule("1. train: recipe in, trained, evaluated, versioned model out"))
    edgeml("train", str(RECIPE.relative_to(ROOT)), "--registry", str(registry))

    console.print(Rule("2. package for each target and verify the bundles"))
    for target in TARGETS:
        edgeml("package", "penguins", "--target", target, "--registry", str(registry),
               "-o", str(bundles))
    for target in TARGETS:
        edgeml("verify", str(bundles / f"penguins-1-{target}.edgeml"))

    console.print(Rule("3. serve on loopback with telemetry to the embedded broker"))
    serve_and_watch(bundles / "penguins-1-x86_64.edgeml")

    console.print(Rule("done"))
    console.print(f"registry: {registry}\nbundles:  {bundles}\n"
                  f"report:   {registry / 'penguins' / '1' / 'report.html'}")
    if DASHBOARD:
        console.print(f"fleet:    $ edgeml dashboard --db {DASHBOARD[0]}\n"
                      "          then open http://127.0.0.1:8090/")


if __name__ == "__main__":
    main()
