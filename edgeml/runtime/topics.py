"""The MQTT topic tree of edgeml: every topic string is built here and nowhere else.

One device lives under ``<base>/<fleet>/<device>/`` (Homie-style; ``base`` defaults to
``edgeml``, ids are ``[a-z0-9-]``)::

    <base>/<fleet>/<device>/$state            retained, QoS 1: init | ready | disconnected | lost (will)
    <base>/<fleet>/<device>/$info             retained, QoS 1: edgeml.info/1 (model, platform, session, topics)
    <base>/<fleet>/<device>/metrics           QoS 1: edgeml.metrics/1 every --metrics-interval seconds
    <base>/<fleet>/<device>/samples           QoS 1: edgeml.sample/1 (opt-in, rate-limited input capture)
    <base>/<fleet>/<device>/feedback/set      command (not retained): {"id": <sample id>, "label": ...}
    <base>/<fleet>/<device>/feedback          QoS 1: edgeml.feedback/1 (the label joined with its sample)
    <base>/<fleet>/<device>/infer             inference requests (MQTT v5: reply to ResponseTopic)
    <base>/<fleet>/<device>/infer/response    default reply topic when a request names none

Wildcard helpers (:func:`fleet_filter`, :func:`all_devices_filter`) and :func:`parse_topic`
are for monitors that watch a whole fleet. Device-safe: standard library only.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from edgeml.errors import UsageError

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_FLEET",
    "INFO",
    "LEAVES",
    "METRICS",
    "SAMPLES",
    "STATE",
    "STATES",
    "DeviceTopics",
    "all_devices_filter",
    "default_device_id",
    "fleet_filter",
    "parse_topic",
    "validate_base",
    "validate_id",
]

DEFAULT_BASE = "edgeml"
DEFAULT_FLEET = "default"

# Leaves under a device root.
STATE = "$state"
INFO = "$info"
METRICS = "metrics"
SAMPLES = "samples"
FEEDBACK = "feedback"
FEEDBACK_SET = "feedback/set"
INFER = "infer"
INFER_RESPONSE = "infer/response"
LEAVES = (STATE, INFO, METRICS, SAMPLES, FEEDBACK, FEEDBACK_SET, INFER, INFER_RESPONSE)

# Values of $state (Homie 4 device lifecycle subset).
STATES = ("init", "ready", "disconnected", "lost")

_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_BASE_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid fleet or device id (``[a-z0-9-]``, 1-64 chars)."""
    if not isinstance(value, str) or not _ID.match(value):
        raise UsageError(
            f"{what} {value!r} is not valid: use 1-64 lowercase letters, digits and '-' "
            "(not at the start or end)"
        )
    return value


def validate_base(value: str) -> str:
    """Return ``value`` if it is a valid base topic (``edgeml``, ``plant-3/edgeml``...)."""
    segments = value.split("/") if isinstance(value, str) else [""]
    if not all(_BASE_SEGMENT.match(s) for s in segments):
        raise UsageError(
            f"base topic {value!r} is not valid: use '/'-separated segments of letters, digits, "
            "'_', '.', '-' (no wildcards, no '$', no leading or trailing '/')"
        )
    return value


def default_device_id() -> str:
    """A device id derived from the host name (lowercased, other characters become '-')."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)[:64].strip("-")
    return name or "device"


@dataclass(frozen=True)
class DeviceTopics:
    """All topics of one device. Build with ``DeviceTopics.create(base, fleet, device)``."""

    base: str
    fleet: str
    device: str

    @classmethod
    def create(cls, base: str, fleet: str, device: str) -> DeviceTopics:
        return cls(validate_base(base), validate_id(fleet, "fleet id"), validate_id(device, "device id"))

    @property
    def root(self) -> str:
        return f"{self.base}/{self.fleet}/{self.device}"

    def leaf(self, name: str) -> str:
        if name not in LEAVES:
            raise ValueError(f"unknown topic leaf {name!r}")
        return f"{self.root}/{name}"

    @property
    def state(self) -> str:
        return self.leaf(STATE)

    @property
    def info(self) -> str:
        return self.leaf(INFO)

    @property
    def metrics(self) -> str:
        return self.leaf(METRICS)

    @property
    def samples(self) -> str:
        return self.leaf(SAMPLES)

    @property
    def feedback(self) -> str:
        return self.leaf(FEEDBACK)

    @property
    def feedback_set(self) -> str:
        return self.leaf(FEEDBACK_SET)

    @property
    def infer(self) -> str:
        return self.leaf(INFER)

    @property
    def infer_response(self) -> str:
        return self.leaf(INFER_RESPONSE)

    @property
    def client_id(self) -> str:
        """The stable MQTT client id: one device id is one session on the broker."""
        return f"edgeml-{self.fleet}-{self.device}"[:128]

    def as_dict(self) -> dict[str, str]:
        """Every topic by role, as published in ``$info``."""
        return {
            "state": self.state,
            "info": self.info,
            "metrics": self.metrics,
            "samples": self.samples,
            "feedback": self.feedback,
            "feedback_set": self.feedback_set,
            "infer": self.infer,
            "infer_response": self.infer_response,
        }

    def everything(self) -> str:
        """Filter matching every topic of this device (``$`` leaves included below level 1)."""
        return f"{self.root}/#"


def fleet_filter(base: str, fleet: str, leaf: str = "#") -> str:
    """``<base>/<fleet>/+/<leaf>``: one leaf (``$state``, ``metrics``...) of every device in a fleet.

    With the default ``leaf="#"`` it matches every topic of every device of the fleet.
    """
    validate_base(base)
    validate_id(fleet, "fleet id")
    if leaf != "#" and leaf not in LEAVES:
        raise ValueError(f"unknown topic leaf {leaf!r}")
    return f"{base}/{fleet}/+/{leaf}"


def all_devices_filter(base: str = DEFAULT_BASE, leaf: str = "#") -> str:
    """``<base>/+/+/<leaf>``: one leaf of every device of every fleet."""
    validate_base(base)
    if leaf != "#" and leaf not in LEAVES:
        raise ValueError(f"unknown topic leaf {leaf!r}")
    return f"{base}/+/+/{leaf}"


def parse_topic(base: str, topic: str) -> tuple[str, str, str] | None:
    """``<base>/<fleet>/<device>/<leaf>`` -> ``(fleet, device, leaf)``; None if not an edgeml topic."""
    prefix = base + "/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/", 2)
    if len(parts) != 3 or parts[2] not in LEAVES:
        return None
    fleet, device, leaf = parts
    if not (_ID.match(fleet) and _ID.match(device)):
        return None
    return fleet, device, leaf
