"""A userspace ``netem`` for kernels without ``sch_netem``: relay IP packets between TUN pairs.

``python netem_relay.py HOST_IF:NS_IF[:LOSS:DELAY_S] ...`` creates, for each pair, two TUN
interfaces (no packet info header) and forwards every packet read from one to the other,
dropping each with probability LOSS and delivering it DELAY_S seconds later (both
directions: the same as ``tc qdisc add dev <veth> root netem loss 10% delay 200ms`` on both
ends of a veth pair). The caller moves NS_IF into its namespace and sets the addresses.

It prints ``ready`` once the interfaces exist, then reads commands on stdin, one a line:
``loss INDEX VALUE`` (``loss 0 1.0`` cuts link 0; ``loss 0 0.1`` restores it) and
``stats`` (prints ``stats <forwarded> <dropped>`` per link). The interfaces vanish when it
exits (stdin closed, SIGTERM). Test helper (tests/netns_support.py); Linux, root.
"""

from __future__ import annotations

import fcntl
import heapq
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main(argv: list[str]) -> int:
    pairs: list[tuple[int, int]] = []
    loss: list[float] = []
    delay: list[float] = []
    for spec in argv:
        parts = spec.split(":")
        pairs.append((open_tun(parts[0]), open_tun(parts[1])))
        loss.append(float(parts[2]) if len(parts) > 2 else 0.0)
        delay.append(float(parts[3]) if len(parts) > 3 else 0.0)
    peer: dict[int, tuple[int, int]] = {}
    for i, (a, b) in enumerate(pairs):
        peer[a] = (b, i)
        peer[b] = (a, i)
    forwarded = [0] * len(pairs)
    dropped = [0] * len(pairs)
    rng = random.Random()
    due: list[tuple[float, int, int, bytes]] = []  # (time, tie, fd, packet)
    tie = 0
    print("ready", flush=True)
    stdin = sys.stdin.fileno()
    buf = b""
    while True:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else 1.0
        readable, _, _ = select.select([stdin, *peer], [], [], timeout)
        for fd in readable:
            if fd == stdin:
                chunk = os.read(stdin, 4096)
                if not chunk:
                    return 0
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    words = line.decode().split()
                    if words[:1] == ["loss"]:
                        loss[int(words[1])] = float(words[2])
                        print("ok", flush=True)
                    elif words[:1] == ["stats"]:
                        print("stats " + " ".join(f"{f}/{d}" for f, d in
                                                  zip(forwarded, dropped, strict=True)),
                              flush=True)
                continue
            out, index = peer[fd]
            for _ in range(64):  # drain what is there, then look at the others again
                try:
                    packet = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    break
                if rng.random() < loss[index]:
                    dropped[index] += 1
                    continue
                tie += 1
                heapq.heappush(due, (time.monotonic() + delay[index], tie, out, packet))
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, out, packet = heapq.heappop(due)
            try:
                os.write(out, packet)
                forwarded[peer[out][1]] += 1
            except OSError:  # the other side is down: the packet is lost
                dropped[peer[out][1]] += 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
