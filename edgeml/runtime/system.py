"""Process and device readings for the metrics payload (Linux /proc and /sys; stdlib only).

Every reading degrades to ``None`` where the platform does not offer it.
"""

from __future__ import annotations

import glob
import os
import platform
import resource
import sys
import time
from importlib import metadata
from typing import Any

__all__ = ["CpuMeter", "device_reading", "platform_info", "rss_bytes", "temperature_c"]


def rss_bytes() -> int | None:
    """Resident set size of this process now (``/proc/self/statm``), else the peak RSS."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024) or None


class CpuMeter:
    """CPU use of this process between two calls, in percent of one core (like ``top``)."""

    def __init__(self) -> None:
        self._last = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        t = os.times()
        return t.user + t.system, time.monotonic()

    def percent(self) -> float | None:
        cpu, wall = self._now()
        last_cpu, last_wall = self._last
        self._last = (cpu, wall)
        if wall <= last_wall:
            return None
        return round(100.0 * (cpu - last_cpu) / (wall - last_wall), 2)


def temperature_c() -> float | None:
    """The hottest ``/sys/class/thermal/thermal_zone*/temp`` in °C, or None without sensors."""
    hottest: float | None = None
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        try:
            with open(path, "rb") as fh:
                value = int(fh.read().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        hottest = value if hottest is None else max(hottest, value)
    return hottest


def device_reading() -> dict[str, Any]:
    try:
        load1: float | None = round(os.getloadavg()[0], 3)
    except OSError:
        load1 = None
    return {"temperature_c": temperature_c(), "load1": load1}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def platform_info() -> dict[str, Any]:
    from edgeml import __version__

    return {
        "arch": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "paho_mqtt": _version("paho-mqtt"),
        "edgeml": __version__,
    }
