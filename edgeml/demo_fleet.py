"""``make demo-fleet``: the whole loop on one machine, with real processes.

Train ``quality-check`` v1 (the champion), package it, flash it for a handful of devices and
start an ``edgeml agent`` from each flashed folder, start ``edgeml monitor`` with the
dashboard and the automatic retraining trigger, then let the field
(:class:`edgeml.fleet.fieldsim.FieldSim`) send the devices parts to judge and answer their
captured samples with the truth. At ``change_at`` the material changes and so does what a
good part is: the monitor sees drift (inputs) and decay (feedback), starts ``edgeml retrain``
on its own once the alerts stayed open and enough labels came in; the challenger is
compared with the champion, shipped as a staged rollout (canary first), and on completion
becomes the champion. The alerts about v1 resolve once no device serves it.

:class:`ClosedLoop` is also what the closed-loop scenario test drives; every step it waits
for is read from the fleet database and the registry. Everything is written under
``build/demo-fleet/`` (re-created on each run). Needs Mosquitto (MQTT v5): a private one on
a free port when the ``mosquitto`` binary is installed, else the one on 127.0.0.1:1883.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

from edgeml.errors import UsageError

__all__ = ["ClosedLoop", "LoopSettings", "main"]

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "models" / "quality-check.yaml"
MODEL = "quality-check"
FLEET = "line"
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class LoopSettings:
    out: Path = ROOT / "build" / "demo-fleet"
    agents: int = 4
    change_at: float = 25.0  # seconds after the field starts
    stages: str = "25%,100%"
    soak_s: float = 8.0
    evaluate_every: float = 2.0
    min_labels: int = 120  # new field labels before a retraining starts
    delay: str = "6s"  # an alert open this long triggers it
    cooldown: str = "10m"
    window: str = "30s"  # what the evaluator judges
    base: str = "edgeml"
    sample_rate: float = 0.5
    timeout_s: float = 600.0
    quiet: bool = False


@dataclass
class ClosedLoop:
    settings: LoopSettings
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    broker_url: str = ""
    dashboard_url: str = ""
    agent_urls: dict[str, str] = field(default_factory=dict)
    field_sim: Any = None
    timeline: list[tuple[float, str]] = field(default_factory=list)
    _t0: float = field(default_factory=time.monotonic)

    # -- paths -------------------------------------------------------------------------------

    @property
    def out(self) -> Path:
        return self.settings.out

    @property
    def registry(self) -> Path:
        return self.out / "registry"

    @property
    def db(self) -> str:
        return f"sqlite:///{self.out / 'fleet.db'}"

    def say(self, text: str) -> None:
        self.timeline.append((time.monotonic() - self._t0, text))
        if not self.settings.quiet:
            console.print(f"[dim]{time.monotonic() - self._t0:6.1f}s[/] {text}")

    def edgeml(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an edgeml command as a user would (echoed); raise if it fails."""
        if not self.settings.quiet:
            console.print(f"[bold cyan]$ edgeml {' '.join(args)}[/]")
        done = subprocess.run([sys.executable, "-m", "edgeml", *args], cwd=ROOT,
                              capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"edgeml {args[0]} failed ({done.returncode}): "
                               f"{done.stderr.strip()[-2000:]}")
        return done

    def spawn(self, name: str, *args: str, cmd: list[str] | None = None) -> None:
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.logs[name] = log
        argv = cmd or [sys.executable, "-m", "edgeml", *args]
        if not self.settings.quiet:
            console.print(f"[bold cyan]$ {' '.join(argv[2:] if cmd is None else argv)}[/]"
                          "  (in the background)")
        with open(log, "wb") as fh:
            self.procs[name] = subprocess.Popen(argv, cwd=ROOT, stdout=fh,
                                                stderr=subprocess.STDOUT)

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout or self.settings.timeout_s)
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            for name, proc in self.procs.items():
                if proc.poll() is not None and name != "broker-check":
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for "
                                       f"{what}: {self.tail(name)}")
            time.sleep(0.5)
        raise TimeoutError(f"demo-fleet: timed out waiting for {what}")

    def tail(self, name: str, n: int = 3000) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace")[-n:] if path and path.exists() else ""

    # -- the steps ---------------------------------------------------------------------------

    def start_broker(self) -> None:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                              if Path("/usr/sbin/mosquitto").exists() else None)
        if binary:
            port = free_port()
            conf = self.out / "mosquitto.conf"
            conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                            "persistence false\nmax_queued_messages 100000\n")
            self.spawn("mosquitto", cmd=[binary, "-c", str(conf)])
            self.broker_url = f"mqtt://127.0.0.1:{port}"
            self.wait("the broker", lambda: _reachable(port), 20)
        elif _reachable(1883):
            self.broker_url = "mqtt://127.0.0.1:1883"
        else:
            raise UsageError("make demo-fleet needs Mosquitto (MQTT v5): apt-get install mosquitto")
        self.say(f"broker {self.broker_url}")

    @property
    def keys(self) -> Path:
        return self.out / "keys"

    def train_champion(self) -> Path:
        self.edgeml("keys", "generate", "--out", str(self.keys))
        self.edgeml("train", str(RECIPE), "--registry", str(self.registry))
        self.edgeml("models", "alias", f"{MODEL}@1", "champion", "--registry", str(self.registry))
        self.edgeml("package", f"{MODEL}@1", "--target", "x86_64", "--registry",
                    str(self.registry), "-o", str(self.out / "bundles"),
                    "--sign-key", str(self.keys / "edgeml.key"))
        bundle = self.out / "bundles" / f"{MODEL}-1-x86_64.edgeml"
        self.say(f"champion {MODEL}@1 trained, packaged and signed: {bundle.name}")
        return bundle

    def thresholds(self) -> Path:
        s = self.settings
        path = self.out / "fleet.yaml"
        retrain_args = ["--deploy", "--fleet", FLEET, "--stages", s.stages,
                        "--soak", str(s.soak_s), "--sign-key", str(self.keys / "edgeml.key"),
                        "--out", str(self.out / "bundles")]
        path.write_text(
            f"window: {s.window}\nmin_rows: 100\nmin_labels: 30\n"
            "defaults:\n  decay: {accuracy_drop: 0.05}\n"
            "retrain:\n"
            f"  logs: {self.out / 'logs'}\n"
            "  models:\n"
            f"    {MODEL}:\n"
            f"      recipe: {RECIPE}\n"
            f"      registry: {self.registry}\n"
            f"      min_labels: {s.min_labels}\n"
            f"      delay: {s.delay}\n"
            f"      cooldown: {s.cooldown}\n"
            f"      args: {json.dumps(retrain_args)}\n")
        return path

    def start_monitor(self) -> None:
        self.edgeml("fleet", "db", "upgrade", "--db", self.db)
        port = free_port()
        self.spawn("monitor", "monitor", "--broker", self.broker_url, "--db", self.db,
                   "--base-topic", self.settings.base, "--http", str(port), "--dashboard",
                   "--evaluate-every", str(self.settings.evaluate_every),
                   "--thresholds", str(self.thresholds()))
        self.dashboard_url = f"http://127.0.0.1:{port}/"
        self.wait("the monitor's dashboard", lambda: _reachable(port), 60)
        self.say(f"monitor with dashboard on {self.dashboard_url}")

    def flash_and_start_agents(self, bundle: Path) -> None:
        for i in range(1, self.settings.agents + 1):
            device = f"line-{i}"
            card = self.out / "devices" / device
            self.edgeml("flash", str(bundle), "--to", str(card), "--broker", self.broker_url)
            state = card / "var" / "lib" / "edgeml"
            port = free_port()
            self.spawn(device, "agent", "--config", str(card / "etc" / "edgeml" / "agent.yaml"),
                       "--state-dir", str(state), "--broker", self.broker_url,
                       "--public-key", str(self.keys / "edgeml.pub"),
                       "--base-topic", self.settings.base, "--fleet", FLEET,
                       "--device-id", device, "--port", str(port), "--metrics-interval", "1",
                       "--sample-rate", str(self.settings.sample_rate),
                       "--sample-max-per-minute", "600")
            self.agent_urls[device] = f"http://127.0.0.1:{port}"
        for device, url in self.agent_urls.items():
            self.wait(f"{device} serving", functools.partial(_ready, url), 90)
        self.wait("every device in the fleet store",
                  lambda: len(self.query("SELECT device FROM devices WHERE fleet = :f",
                                         f=FLEET)) >= self.settings.agents, 60)
        self.say(f"{len(self.agent_urls)} agents flashed and serving {MODEL}@1")

    def start_field(self) -> None:
        from edgeml.fleet.fieldsim import FieldSim
        from edgeml.runtime.settings import BrokerSettings

        self.field_sim = FieldSim(BrokerSettings.from_url(self.broker_url), self.settings.base,
                                  FLEET, self.agent_urls, change_at=self.settings.change_at)
        self.field_sim.start()
        self.say(f"field running: the material changes in {self.settings.change_at:.0f}s")

    # -- reading the outcome -----------------------------------------------------------------

    def query(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.db)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params).all())
        finally:
            engine.dispose()

    def champion(self) -> int | None:
        path = self.registry / MODEL / "aliases.json"
        if not path.exists():
            return None
        value = json.loads(path.read_text()).get("champion")
        return int(value) if value is not None else None

    def run(self) -> dict[str, Any]:
        """Every step, in order; returns what happened (read from the store and registry)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.start_broker()
        bundle = self.train_champion()
        self.start_monitor()
        self.flash_and_start_agents(bundle)
        self.start_field()
        kinds = self.wait("decay and drift alerts on v1", lambda: (lambda k: k if k >= {
            "decay", "drift"} else None)({a.kind for a in self.query(
                "SELECT kind FROM alerts WHERE model_name = :m AND model_version = 1 "
                "AND resolved_at IS NULL AND kind IN ('decay', 'drift')", m=MODEL)}))
        self.say(f"alerts open on {MODEL}@1: {', '.join(sorted(kinds))}")
        run = self.wait("a retraining started by the monitor", lambda: self.query(
            "SELECT id, trigger FROM retrain_runs WHERE model_name = :m", m=MODEL))
        self.say(f"retraining #{run[0].id} started by the monitor (trigger: {run[0].trigger})")
        done = self.wait("the retraining's outcome", lambda: self.query(
            "SELECT id, state, version, reason, deployment_id FROM retrain_runs "
            "WHERE model_name = :m AND state != 'running'", m=MODEL))
        self.say(f"retraining #{done[0].id}: {done[0].state} v{done[0].version} "
                 f"({done[0].reason or 'no reason given'})")
        if done[0].state not in ("registered", "promoted", "halted"):
            raise RuntimeError(f"retraining {done[0].state}: {done[0].reason}")
        dep = self.wait("the rollout of the challenger", lambda: self.query(
            "SELECT id, state, stage FROM deployments WHERE model_name = :m", m=MODEL))
        self.say(f"rollout {dep[0].id} started (stages {self.settings.stages})")
        final = self.wait("the rollout to finish", lambda: self.query(
            "SELECT id, state, reason FROM deployments WHERE id = :i AND state != 'running'",
            i=dep[0].id))
        self.say(f"rollout {final[0].state}" + (f": {final[0].reason}" if final[0].reason else ""))
        if final[0].state == "completed":
            self.wait("the champion alias on v2", lambda: self.champion() == done[0].version, 60)
            self.say(f"champion is now {MODEL}@{self.champion()}")
            self.wait("the alerts about v1 resolved", lambda: not self.query(
                "SELECT id FROM alerts WHERE model_name = :m AND model_version = 1 "
                "AND resolved_at IS NULL AND kind IN ('decay', 'drift')", m=MODEL), 120)
            self.say("the alerts about v1 are resolved")
            self.wait(f"{MODEL}@2 judged on enough rows", lambda: self.query(
                "SELECT sum(rows) AS n FROM metrics_windows WHERE model_name = :m "
                "AND model_version = :v HAVING sum(rows) >= 400", m=MODEL, v=done[0].version),
                120)
            time.sleep(3 * self.settings.evaluate_every)  # a few evaluations of v2
            for version in (1, done[0].version):
                acc = self.field_sim.stats.accuracy(version)
                if acc is not None:
                    self.say(f"field accuracy of {MODEL}@{version} on captured samples: {acc:.2f}")
        return {"retrain": dict(done[0]._mapping), "deployment": dict(final[0]._mapping),
                "champion": self.champion(), "dashboard": self.dashboard_url}

    def stop(self) -> None:
        if self.field_sim is not None:
            self.field_sim.stop()
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _ready(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def main() -> None:
    settings = LoopSettings()
    shutil.rmtree(settings.out, ignore_errors=True)
    loop = ClosedLoop(settings)
    console.print(Rule("make demo-fleet: train, flash, monitor, drift, retrain, canary, promote"))
    try:
        outcome = loop.run()
        console.print(Rule("what happened"))
        for at, text in loop.timeline:
            console.print(f"  {at:6.1f}s  {text}")
        console.print(f"\ndashboard: {loop.dashboard_url} (rollouts: {loop.dashboard_url}rollouts)")
        console.print(f"registry:  {loop.registry}\nfleet db:  {loop.db}")
        if os.environ.get("EDGEML_DEMO_KEEP"):
            console.print("EDGEML_DEMO_KEEP is set: everything keeps running; Ctrl-C to stop")
            while True:
                time.sleep(3600)
        del outcome
    except KeyboardInterrupt:
        pass
    finally:
        loop.stop()


if __name__ == "__main__":
    main()
