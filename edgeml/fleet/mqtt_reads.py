"""Fewer system calls per received message for the monitor's paho client.

paho-mqtt reads a packet with three or four ``recv`` calls (command byte, length bytes,
body) and one ``select`` per packet: at thousands of messages per second that is most
of the monitor's network thread. :func:`buffer_reads` changes two things on one client:

- its TCP socket is wrapped in :class:`BufferedSocket`, which reads up to 256 KiB at a
  time and hands paho the bytes it asks for from that buffer. ``pending()`` reports the
  buffered bytes, so paho's loop does not wait in ``select`` while some are left (the
  same contract paho already relies on for TLS sockets);
- ``loop_read`` handles up to :data:`PACKETS_PER_READ` packets per wake-up instead of
  one, returning as soon as the socket has nothing more.

Packets are handled exactly as before (same parser, same callbacks, same order). Uses
paho's private ``_create_socket``, ``_packet_read`` and ``_loop_rc_handle`` (paho-mqtt
2.x); a client without them is left as it is. WebSocket transports are left alone.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt

__all__ = ["PACKETS_PER_READ", "BufferedSocket", "buffer_reads"]

PACKETS_PER_READ = 256
_CHUNK = 256 * 1024


class BufferedSocket:
    """A non-blocking socket whose ``recv`` is served from one large read at a time."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(_CHUNK)  # BlockingIOError / SSL errors go to paho
            if len(data) <= size:
                return data  # type: ignore[no-any-return]
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + size, len(self._buf))
        return self._buf[start:self._pos]

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:  # send, fileno, close, setblocking, ...
        return getattr(self._sock, name)


def buffer_reads(client: mqtt.Client) -> bool:
    """Install buffered reads on ``client`` (before it connects). False if not possible."""
    create = getattr(client, "_create_socket", None)
    read_one = getattr(client, "_packet_read", None)
    handle = getattr(client, "_loop_rc_handle", None)
    if create is None or read_one is None or handle is None:
        return False
    if getattr(client, "_transport", "tcp") == "websockets":
        return False

    def create_socket() -> Any:
        return BufferedSocket(create())

    def loop_read(max_packets: int = 1) -> mqtt.MQTTErrorCode:
        for _ in range(PACKETS_PER_READ):
            if client._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = read_one()
            if rc > 0:
                return handle(rc)  # type: ignore[no-any-return]
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    client._create_socket = create_socket  # type: ignore[method-assign]
    client.loop_read = loop_read  # type: ignore[method-assign]
    return True
