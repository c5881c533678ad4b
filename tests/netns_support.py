"""Flaky links for the agent tests: network namespaces linked to the root one through loss and delay.

:class:`FlakyLinks` makes ``count`` network namespaces (unique names per run), each with one
point-to-point link to the root namespace in a private range (``10.213.X.4i+1`` on the host
side, ``+2`` in the namespace; no default route in the namespace, so nothing in it reaches
anything but its peer address). Both directions lose ``loss`` of the packets and delay the
rest by ``delay_s`` (what ``tc qdisc add dev <veth> root netem loss 10% delay 200ms`` on
both ends of a veth pair does). :meth:`FlakyLinks.cut` drops every packet (loss 100%) until
:meth:`FlakyLinks.restore`.

Two ways to get there, chosen by :func:`netem_available`:

- ``netem``: a veth pair per namespace and ``tc netem`` on both ends (kernels with
  ``sch_netem``);
- ``relay``: a TUN pair per namespace and ``tests/netem_relay.py``, a userspace packet relay
  doing the same loss and delay (kernels without ``sch_netem``, such as this CI's VM).

:meth:`FlakyLinks.close` removes everything (the relay, the namespaces with their
interfaces, host-side veths) and is safe to call twice; use it from a fixture finalizer.
Linux, root.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

RELAY = Path(__file__).with_name("netem_relay.py")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=30)


def can_run() -> str | None:
    """Why these tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if run("ip", "netns", "list", check=False).returncode != 0:
        return "no ip netns"
    if not os.path.exists("/dev/net/tun") and not netem_available():
        return "neither tc netem nor /dev/net/tun"
    return None


def netem_available() -> bool:
    """Does this kernel have ``sch_netem``? (tried on a throwaway veth pair)."""
    name = f"emp{uuid.uuid4().hex[:8]}"
    if run("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p",
           check=False).returncode != 0:
        return False
    try:
        return run("tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms",
                   check=False).returncode == 0
    finally:
        run("ip", "link", "del", name, check=False)


def _free_octet() -> int:
    used = set(re.findall(r"inet 10\.213\.(\d+)\.", run("ip", "-4", "addr").stdout))
    free = [x for x in range(256) if str(x) not in used]
    if not free:
        raise RuntimeError("no free 10.213.X.0/24 block")
    return random.choice(free)


@dataclass(frozen=True)
class Link:
    index: int
    netns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    def wrap(self) -> tuple[str, ...]:
        """The command prefix that runs a program inside this namespace."""
        return ("ip", "netns", "exec", self.netns)


class FlakyLinks:
    def __init__(self, count: int, loss: float = 0.10, delay_s: float = 0.2,
                 mode: str | None = None) -> None:
        self.loss, self.delay_s = loss, delay_s
        self.mode = mode or ("netem" if netem_available() else "relay")
        tag = f"em{uuid.uuid4().hex[:6]}"
        octet = _free_octet()
        self.links = [Link(i, f"{tag}-ns{i}", f"{tag}h{i}", f"{tag}d{i}",
                           f"10.213.{octet}.{4 * i + 1}", f"10.213.{octet}.{4 * i + 2}")
                      for i in range(count)]
        self.relay: subprocess.Popen[str] | None = None
        self._made: list[Link] = []
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    # -- setup ----------------------------------------------------------------------------

    def _create(self) -> None:
        for link in self.links:
            run("ip", "netns", "add", link.netns)
            self._made.append(link)
            run(*link.wrap(), "ip", "link", "set", "lo", "up")
        if self.mode == "relay":
            specs = [f"{lk.host_if}:{lk.ns_if}:{self.loss}:{self.delay_s}" for lk in self.links]
            self.relay = subprocess.Popen([sys.executable, str(RELAY), *specs],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
            assert self.relay.stdout is not None
            line = self.relay.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"netem relay did not start: {line!r} "
                                   f"{self.relay.stderr.read() if self.relay.stderr else ''}")
        for link in self.links:
            if self.mode == "netem":
                run("ip", "link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
            run("ip", "link", "set", link.ns_if, "netns", link.netns)
            run("ip", "addr", "add", link.host_ip, "peer", link.ns_ip, "dev", link.host_if)
            run("ip", "link", "set", link.host_if, "up")
            run(*link.wrap(), "ip", "addr", "add", link.ns_ip, "peer", link.host_ip,
                "dev", link.ns_if)
            run(*link.wrap(), "ip", "link", "set", link.ns_if, "up")
            if self.mode == "netem":
                self._netem(link, "add", self.loss)

    def _netem(self, link: Link, verb: str, loss: float) -> None:
        args = ("root", "netem", "loss", f"{loss * 100:g}%", "delay",
                f"{self.delay_s * 1000:g}ms")
        run("tc", "qdisc", verb, "dev", link.host_if, *args)
        run(*link.wrap(), "tc", "qdisc", verb, "dev", link.ns_if, *args)

    # -- the faults -------------------------------------------------------------------------

    def set_loss(self, loss: float, links: list[Link] | None = None) -> None:
        for link in links or self.links:
            if self.mode == "netem":
                self._netem(link, "change", loss)
            else:
                assert self.relay is not None and self.relay.stdin is not None
                assert self.relay.stdout is not None
                self.relay.stdin.write(f"loss {link.index} {loss}\n")
                self.relay.stdin.flush()
                assert self.relay.stdout.readline().strip() == "ok"

    def cut(self, links: list[Link] | None = None) -> None:
        self.set_loss(1.0, links)

    def restore(self, links: list[Link] | None = None) -> None:
        self.set_loss(self.loss, links)

    def stats(self) -> str:
        """``forwarded/dropped`` packets per link (relay mode), or the qdisc statistics."""
        if self.mode == "netem":
            return "; ".join(run("tc", "-s", "qdisc", "show", "dev", lk.host_if).stdout.strip()
                             for lk in self.links)
        assert self.relay is not None and self.relay.stdin is not None
        assert self.relay.stdout is not None
        self.relay.stdin.write("stats\n")
        self.relay.stdin.flush()
        return self.relay.stdout.readline().strip()

    # -- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Remove what this object made: processes left in its namespaces, the relay, the
        namespaces (their interfaces go with them) and the host-side veths."""
        for link in self._made:
            pids = run("ip", "netns", "pids", link.netns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
        if self.relay is not None:
            relay, self.relay = self.relay, None
            relay.terminate()
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait(10)
            for stream in (relay.stdin, relay.stdout, relay.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for link in self._made:
            run("ip", "netns", "del", link.netns, check=False)
            run("ip", "link", "del", link.host_if, check=False)  # veth mode; gone already else
        self._made = []

    def leftovers(self) -> list[str]:
        """Namespaces or interfaces of this object still present (empty after close)."""
        names = run("ip", "netns", "list").stdout + run("ip", "-o", "link").stdout
        return [n for lk in self.links for n in (lk.netns, lk.host_if) if n in names]
