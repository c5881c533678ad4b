"""The MQTT topic tree of edgeml: every topic string is built here and nowhere else.

One device lives under ``<base>/<fleet>/<device>/`` (Homie-style; ``base`` defaults to
``edgeml``, ids are ``[a-z0-9-]``)::

    <base>/<fleet>/<device>/$state            retained, QoS 1: init | ready | disconnected | lost (will)
    <base>/<fleet>/<device>/$info             retained, QoS 1: edgeml.info/2 (model, platform, session, topics, reference)
    <base>/<fleet>/<device>/metrics           QoS 1: edgeml.metrics/2 every --metrics-interval seconds
    <base>/<fleet>/<device>/samples           QoS 1: edgeml.sample/1 (opt-in, rate-limited input capture)
    <base>/<fleet>/<device>/feedback/set      command (not retained): {"id": <sample id>, "label": ...}
    <base>/<fleet>/<device>/feedback          QoS 1: edgeml.feedback/1 (the label joined with its sample)
    <base>/<fleet>/<device>/infer             inference requests (MQTT v5: reply to ResponseTopic)
    <base>/<fleet>/<device>/infer/response    default reply topic when a request names none
    <base>/<fleet>/<device>/deploy/set        deploy command (QoS 1, not retained; edgeml.agent.protocol)
    <base>/<fleet>/<device>/deploy            QoS 1, spooled: edgeml.deploy-report/1 (received ... committed)
    <base>/<fleet>/<device>/deploy/chunks/get QoS 1: the device asks for chunks of a bundle
    <base>/<fleet>/<device>/deploy/chunks     QoS 1: binary chunks sent to the device
    <base>/$alerts/<fleet>/<device>           QoS 1: edgeml.alert/1, published by the fleet monitor
                                              (``$fleet`` for a fleet- or model-wide alert)

Wildcard helpers (:func:`fleet_filter`, :func:`all_devices_filter`, :func:`shared_filter`)
and :func:`parse_topic` are for monitors that watch a whole fleet. Device-safe: standard library only.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from edgeml.errors import UsageError

__all__ = [
    "ALERTS",
    "DEFAULT_BASE",
    "DEFAULT_FLEET",
    "INFO",
    "LEAVES",
    "METRICS",
    "SAMPLES",
    "STATE",
    "STATES",
    "DeviceTopics",
    "alert_topic",
    "alerts_filter",
    "all_devices_filter",
    "default_device_id",
    "fleet_filter",
    "parse_topic",
    "shared_filter",
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
DEPLOY = "deploy"
DEPLOY_SET = "deploy/set"
DEPLOY_CHUNKS = "deploy/chunks"
DEPLOY_CHUNKS_GET = "deploy/chunks/get"
LEAVES = (STATE, INFO, METRICS, SAMPLES, FEEDBACK, FEEDBACK_SET, INFER, INFER_RESPONSE,
          DEPLOY, DEPLOY_SET, DEPLOY_CHUNKS, DEPLOY_CHUNKS_GET)

# Values of $state (Homie 4 device lifecycle subset).
STATES = ("init", "ready", "disconnected", "lost")

_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_BASE_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")
_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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
    def deploy(self) -> str:
        return self.leaf(DEPLOY)

    @property
    def deploy_set(self) -> str:
        return self.leaf(DEPLOY_SET)

    @property
    def deploy_chunks(self) -> str:
        return self.leaf(DEPLOY_CHUNKS)

    @property
    def deploy_chunks_get(self) -> str:
        return self.leaf(DEPLOY_CHUNKS_GET)

    @property
    def client_id(self) -> str:
        """The stable MQTT client id: one device id is one session on the broker."""
        return f"edgeml-{self.fleet}-{self.device}"[:128]

    @property
    def deploy_client_id(self) -> str:
        """The deploy agent's own MQTT session (beside the telemetry one)."""
        return f"edgeml-{self.fleet}-{self.device}"[:121] + "-deploy"

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
            "deploy": self.deploy,
            "deploy_set": self.deploy_set,
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


def shared_filter(group: str, topic_filter: str) -> str:
    """``$share/<group>/<filter>``: an MQTT v5 shared subscription; the group splits the messages.

    Brokers send no retained messages to shared subscriptions: subscribe to retained leaves
    (``$state``, ``$info``) with an ordinary filter.
    """
    if not isinstance(group, str) or not _GROUP.match(group):
        raise UsageError(
            f"group {group!r} is not valid: use 1-64 letters, digits, '_', '.', '-'"
        )
    return f"$share/{group}/{topic_filter}"


ALERTS = "$alerts"  # the monitor's alert tree: <base>/$alerts/<fleet|$fleet>/<device|$fleet>
FLEET_WIDE = "$fleet"


def alert_topic(base: str, fleet: str | None, device: str | None) -> str:
    """``<base>/$alerts/<fleet>/<device>`` where the monitor publishes edgeml.alert/1.

    A fleet-wide alert uses ``$fleet`` for the device, a model-wide one for both
    (``$`` cannot start an id, so this tree never collides with a device's).
    """
    validate_base(base)
    f = validate_id(fleet, "fleet id") if fleet is not None else FLEET_WIDE
    d = validate_id(device, "device id") if device is not None else FLEET_WIDE
    return f"{base}/{ALERTS}/{f}/{d}"


def alerts_filter(base: str = DEFAULT_BASE) -> str:
    """``<base>/$alerts/#``: every alert the monitors publish."""
    validate_base(base)
    return f"{base}/{ALERTS}/#"


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
