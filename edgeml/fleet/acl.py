"""Who may command a device: a Mosquitto ACL file for an edgeml fleet (``edgeml fleet acl``).

The broker authenticates every client (``password_file``, ``allow_anonymous false``) and
``acl_file`` then decides per topic. The file written here has two parts:

- **Devices** (``pattern`` lines, one set for every client): ``%u`` is the MQTT username,
  so a device's username must equal its device id (``edgeml agent --device-id pump-07
  --username pump-07``). A device publishes only the leaves it owns under its own root
  ``<base>/<fleet>/<its id>/`` (``$state`` and its will, ``$info``, ``metrics``, ``samples``,
  ``feedback``, ``infer/response``, ``deploy``, ``deploy/chunks/get``) and reads only what
  is sent to it (``infer``, ``feedback/set``, ``deploy/set``, ``deploy/chunks``, plus its own
  ``$state``, which it watches to overwrite a stale ``lost``). It cannot publish as another
  device, read another device's commands, nor command anyone.
- **Monitors** (``user`` blocks): read and write everything under ``<base>/`` (metrics of
  every device, ``deploy/set`` commands, chunks, ``$alerts``), shared subscriptions
  (``$share/<group>/...``) included: Mosquitto checks those against the filter after the
  group.

With ``fleets`` the device patterns name each fleet (a device id may then appear in any of
them); without, ``+`` stands for any fleet. Device ids must be unique across the fleets of
one broker in either case, since the username does not carry the fleet.

An MQTT inference request whose ``ResponseTopic`` lies outside the device's root gets no
reply under this ACL (the broker refuses the publish): reply topics are the device's own
``infer/response``.

Host side; standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeml._files import atomic_write
from edgeml.errors import UsageError
from edgeml.runtime import topics

__all__ = ["DEVICE_PUBLISHES", "DEVICE_READS", "DEVICE_READWRITE", "AclSpec", "render_acl",
           "write_acl"]

# Every leaf of topics.LEAVES is in exactly one of these (tests/test_fleet_acl.py checks).
DEVICE_READWRITE = (topics.STATE,)  # published (with the will) and watched for a stale ``lost``
DEVICE_PUBLISHES = (topics.INFO, topics.METRICS, topics.SAMPLES, topics.FEEDBACK,
                    topics.INFER_RESPONSE, topics.DEPLOY, topics.DEPLOY_CHUNKS_GET)
DEVICE_READS = (topics.INFER, topics.FEEDBACK_SET, topics.DEPLOY_SET, topics.DEPLOY_CHUNKS)

_MONITOR = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")  # monitor usernames: no spaces, no wildcards


@dataclass(frozen=True)
class AclSpec:
    """What the ACL file grants: the base topic, the fleets of the devices, the monitor users."""

    base: str = topics.DEFAULT_BASE
    fleets: tuple[str, ...] = ()  # empty: any fleet
    monitors: tuple[str, ...] = ()

    @classmethod
    def create(cls, base: str = topics.DEFAULT_BASE, fleets: Sequence[str] = (),
               monitors: Sequence[str] = ()) -> AclSpec:
        topics.validate_base(base)
        for fleet in fleets:
            topics.validate_id(fleet, "fleet id")
        for user in monitors:
            if not _MONITOR.match(user):
                raise UsageError(f"monitor user {user!r} is not valid: use 1-128 letters, "
                                 "digits, '_', '.', '@', '-'")
        return cls(base, tuple(dict.fromkeys(fleets)), tuple(dict.fromkeys(monitors)))


def render_acl(spec: AclSpec) -> str:
    """The text of a Mosquitto ``acl_file`` for ``spec``."""
    fleets = spec.fleets or ("+",)
    lines = [
        "# Mosquitto ACL for edgeml, written by `edgeml fleet acl` (edgeml.fleet.acl).",
        "# Use with: password_file <file>, acl_file <this file>, allow_anonymous false.",
        "# A device's MQTT username must equal its device id (%u below).",
        "",
        "# Devices: publish only under their own root, read only what is sent to them.",
    ]
    for fleet in fleets:
        root = f"{spec.base}/{fleet}/%u"
        lines += [f"pattern readwrite {root}/{leaf}" for leaf in DEVICE_READWRITE]
        lines += [f"pattern write {root}/{leaf}" for leaf in DEVICE_PUBLISHES]
        lines += [f"pattern read {root}/{leaf}" for leaf in DEVICE_READS]
    lines.append("")
    if spec.monitors:
        lines.append("# Monitors: read every device, send commands and chunks, publish alerts.")
    for user in spec.monitors:
        lines += [f"user {user}", f"topic readwrite {spec.base}/#", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_acl(spec: AclSpec, out: str | Path) -> Path:
    """Write the ACL file atomically (mode 0644: mosquitto may run as its own user)."""
    return atomic_write(out, render_acl(spec), mode=0o644)
