"""Seeded generators of the example datasets shipped in ``models/data/``.

- :func:`machine_health`: predictive-maintenance sensor readings with injected faults;
- :func:`support_tickets`: short support tickets (free text) labelled with a category;
- :func:`machine_load`: time-stamped readings whose load level follows a daily shift cycle
  and the season;
- :func:`quality_check`: inline inspection of parts (``ok``/``reject``) under a labelling
  rule that can change (:func:`quality_verdict`), with inputs that can shift: the world of
  the retraining loop (``edgeml.fleet.fieldsim``, ``make demo-fleet``).

``python -m edgeml.train.generators [OUTDIR]`` regenerates ``machine_health.csv``,
``support_tickets.csv``, ``machine_load.csv`` and ``quality_check.csv`` byte-identically (default OUTDIR:
``models/data``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from edgeml._files import atomic_write

__all__ = ["DEFAULTS", "machine_health", "machine_load", "main", "quality_check", "quality_inputs",
           "quality_verdict", "support_tickets", "write_csv"]

# machine type -> (rpm, current A, temperature C, pressure bar, vibration mm/s RMS) means
_MACHINES: dict[str, tuple[float, float, float, float, float]] = {
    "pump": (1750.0, 12.0, 55.0, 4.0, 2.0),
    "compressor": (2950.0, 20.0, 68.0, 8.0, 3.0),
    "fan": (1450.0, 6.0, 45.0, 1.2, 1.5),
    "conveyor": (900.0, 9.0, 50.0, 2.0, 2.4),
}
_FAULTS = ("bearing_wear", "overheating", "electrical")


def machine_health(n_rows: int = 2000, seed: int = 7, fault_rate: float = 0.06) -> pd.DataFrame:
    """Sensor readings of a fleet of machines; ``fault`` is 1 where a fault was injected.

    Faults: ``bearing_wear`` (vibration x2.2-3.5, slightly warmer, more likely on old
    machines), ``overheating`` (+16-28 C, a little more current), ``electrical`` (current
    spikes x1.5-2, rpm dips). About 1% of temperature and pressure readings are missing
    (sensor dropouts).
    """
    rng = np.random.default_rng(seed)
    types = list(_MACHINES)
    n_machines = max(4, min(120, n_rows // 15))
    machine_type = [types[i % len(types)] for i in range(n_machines)]
    machine_hours = rng.uniform(500, 40000, n_machines)
    mid = rng.integers(0, n_machines, n_rows)
    kind = np.array([machine_type[m] for m in mid])
    base = np.array([_MACHINES[k] for k in kind])
    hours = np.round(machine_hours[mid] + rng.uniform(0, 2000, n_rows))
    load = rng.uniform(0.6, 1.0, n_rows)
    rpm = base[:, 0] * (0.97 + 0.05 * load) + rng.normal(0, 12, n_rows)
    current = base[:, 1] * (0.55 + 0.5 * load) + rng.normal(0, 0.4, n_rows)
    temperature = base[:, 2] + 12 * (load - 0.8) + rng.normal(0, 2.0, n_rows)
    pressure = base[:, 3] * (0.9 + 0.15 * load) + rng.normal(0, 0.12, n_rows)
    vibration = base[:, 4] * (1 + hours / 80000) + rng.normal(0, 0.18, n_rows)

    fault_type = np.full(n_rows, "none", dtype=object)
    is_fault = rng.random(n_rows) < fault_rate
    wear_bias = hours / hours.max()
    for i in np.flatnonzero(is_fault):
        p = np.array([0.3 + 0.3 * wear_bias[i], 0.3, 0.3])
        fault_type[i] = _FAULTS[rng.choice(3, p=p / p.sum())]
    f = fault_type
    n = {name: int((f == name).sum()) for name in _FAULTS}
    vibration[f == "bearing_wear"] *= rng.uniform(2.2, 3.5, n["bearing_wear"])
    temperature[f == "bearing_wear"] += rng.uniform(2, 6, n["bearing_wear"])
    temperature[f == "overheating"] += rng.uniform(16, 28, n["overheating"])
    current[f == "overheating"] *= rng.uniform(1.04, 1.12, n["overheating"])
    current[f == "electrical"] *= rng.uniform(1.5, 2.0, n["electrical"])
    rpm[f == "electrical"] *= rng.uniform(0.90, 0.96, n["electrical"])
    vibration[f == "electrical"] *= rng.uniform(1.0, 1.3, n["electrical"])

    temperature = np.round(temperature, 1)
    pressure = np.round(pressure, 2)
    temperature[rng.random(n_rows) < 0.01] = np.nan
    pressure[rng.random(n_rows) < 0.01] = np.nan
    return pd.DataFrame(
        {
            "reading_id": np.arange(1, n_rows + 1),
            "machine_id": [f"M-{m + 1:03d}" for m in mid],
            "machine_type": kind.astype(object),
            "operating_hours": hours.astype(np.int64),
            "rpm": np.round(rpm).astype(np.int64),
            "temperature_c": temperature,
            "vibration_rms": np.round(np.abs(vibration), 3),
            "current_a": np.round(current, 2),
            "pressure_bar": pressure,
            "fault_type": fault_type,
            "fault": (fault_type != "none").astype(np.int64),
        }
    )


_TICKETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # category -> (templates, things); {x} is a thing, {n} a number, {e} an error code
    "hardware": (
        (
            "my {x} will not turn on after the power cut",
            "the {x} makes a loud clicking noise and then shuts down",
            "screen on my {x} is cracked, need a replacement",
            "{x} overheats and the fan is very loud",
            "battery of the {x} drains in {n} minutes",
            "the {x} in room {n} is broken, keys are stuck",
            "printer jammed again, paper stuck in tray {n}",
            "docking station does not charge my {x} anymore",
        ),
        ("laptop", "monitor", "keyboard", "desktop", "docking station", "mouse", "printer"),
    ),
    "network": (
        (
            "cannot connect to the wifi on floor {n}",
            "vpn disconnects every {n} minutes, error {e}",
            "internet is extremely slow since this morning",
            "no network access from the {x}, cable is plugged in",
            "cannot reach the intranet site, dns lookup fails",
            "packet loss on the office connection, ping times {n} ms",
            "the wifi drops when I move to the meeting room",
            "remote desktop times out over the vpn",
        ),
        ("laptop", "desktop", "phone", "meeting room", "printer"),
    ),
    "billing": (
        (
            "I was charged twice for invoice {e}",
            "please refund the duplicate payment of {n} euros",
            "my invoice shows the wrong amount, should be {n}",
            "credit card was declined but money was taken",
            "need a copy of the receipt for order {e}",
            "why did my subscription price go up by {n} percent",
            "cancel my plan and stop the monthly charge",
            "the VAT number on the invoice is missing",
        ),
        ("invoice", "subscription", "order", "account"),
    ),
    "software": (
        (
            "the app crashes when I open a report, error {e}",
            "cannot install the update, it fails at {n} percent",
            "excel freezes when saving files larger than {n} MB",
            "license key for the {x} is rejected as invalid",
            "after the update the {x} shows a blank window",
            "my password reset link for the {x} does not work",
            "the {x} keeps asking me to log in again",
            "outlook will not sync my calendar, exception {e}",
        ),
        ("editor", "mail client", "crm tool", "browser", "accounting app"),
    ),
}
_OPENERS = ("", "", "hi, ", "Hello team! ", "URGENT: ", "hey... ", "Good morning, ", "re: ticket #{n} - ")
_CLOSERS = ("", "", " thanks", " Thanks in advance!!", " pls help asap", " ???", " :(", " -- sent from my phone")
_CHANNELS = ("email", "chat", "phone", "portal")
_CHANNEL_BIAS = {"hardware": 2, "network": 1, "billing": 0, "software": 3}


def support_tickets(n_rows: int = 1200, seed: int = 11, label_noise: float = 0.03) -> pd.DataFrame:
    """Short ticket texts -> category (hardware/network/billing/software), with noisy text.

    Texts carry digits (ticket numbers, error codes), punctuation and random casing, so
    the text-cleaning options matter; ``label_noise`` of the labels are flipped at random.
    """
    rng = np.random.default_rng(seed)
    cats = list(_TICKETS)
    rows: list[dict[str, object]] = []
    for i in range(n_rows):
        cat = cats[int(rng.integers(len(cats)))]
        templates, things = _TICKETS[cat]
        slots = {
            "x": things[int(rng.integers(len(things)))],
            "n": str(int(rng.integers(2, 1000))),
            "e": f"{'EINV'[int(rng.integers(4))]}-{int(rng.integers(100, 99999)):05d}",
        }
        body = templates[int(rng.integers(len(templates)))].format(**slots)
        opener = _OPENERS[int(rng.integers(len(_OPENERS)))].format(**slots)
        text = opener + body + _CLOSERS[int(rng.integers(len(_CLOSERS)))]
        style = rng.random()
        if style < 0.08:
            text = text.upper()
        elif style < 0.5:
            text = text[:1].upper() + text[1:] + "."
        label = cat
        if rng.random() < label_noise:
            label = cats[int(rng.integers(len(cats)))]
        channel = _CHANNELS[_CHANNEL_BIAS[cat]] if rng.random() < 0.4 else _CHANNELS[int(rng.integers(4))]
        if rng.random() < 0.03:
            channel = ""
        rows.append({"ticket_id": 10000 + i, "channel": channel, "text": text, "category": label})
    return pd.DataFrame(rows)


_LOAD_START = np.datetime64("2023-01-01T00:00:00")
_LOAD_LEVELS = ("idle", "normal", "peak")


def machine_load(n_rows: int = 3000, seed: int = 13, days: int = 731) -> pd.DataFrame:
    """Readings of one plant's machines at random times from 2023-01-01 over ``days`` days.

    The hidden load is mostly the calendar: the day shift (06:00-18:00 UTC on weekdays, a
    smooth ramp in and out) and the season (cooling demand peaks in late July); the sensors
    (current, temperature, vibration) see it only through heavy noise, and the temperature
    also follows the weather. ``load`` is ``idle`` / ``normal`` / ``peak`` (thresholds on the
    hidden load). ``timestamp`` is ISO 8601 UTC (``...Z``); rows are in time order.
    """
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, days * 86400, size=n_rows))
    stamps = _LOAD_START + seconds.astype("timedelta64[s]")
    ts = pd.DatetimeIndex(stamps)
    hour = ts.hour.to_numpy() + ts.minute.to_numpy() / 60.0
    weekday = ts.day_of_week.to_numpy()
    doy = ts.day_of_year.to_numpy()
    shift = 1.0 / (1.0 + np.exp(-2.0 * (hour - 6.0))) - 1.0 / (1.0 + np.exp(-2.0 * (hour - 18.0)))
    shift = np.where(weekday < 5, shift, 0.15 * shift)
    season = np.cos(2 * np.pi * (doy - 205) / 365.25)  # +1 late July, -1 late January
    hidden = 0.55 * shift + 0.3 * season + rng.normal(0.0, 0.08, n_rows)
    load = np.where(hidden < 0.15, 0, np.where(hidden > 0.55, 2, 1))
    machine = rng.choice(("pump", "compressor", "fan"), size=n_rows)
    base = np.select([machine == "pump", machine == "compressor"], [12.0, 20.0], 6.0)
    weather = 12.0 + 9.0 * season + rng.normal(0.0, 4.0, n_rows)
    frame = pd.DataFrame({
        "timestamp": [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in ts],
        "machine_type": machine,
        "current_a": np.round(base * (1.0 + 0.5 * hidden) + rng.normal(0.0, 3.0, n_rows), 2),
        "temperature_c": np.round(weather + 6.0 * hidden + rng.normal(0.0, 2.0, n_rows), 1),
        "vibration_mm_s": np.round(np.abs(1.5 + 1.2 * hidden + rng.normal(0.0, 0.9, n_rows)), 3),
        "load": [_LOAD_LEVELS[i] for i in load],
    })
    return frame


_LINES = ("north", "south", "east")
_LINE_OFFSET = {"north": 0.0, "south": 0.35, "east": -0.35}
# rule -> (nominal thickness mm, nominal temperature C): rule 2 is the new supplier's
# material, thicker and cured hotter, so parts that rule 1 rejects are good under rule 2.
_RULES = {1: (2.0, 60.0), 2: (2.7, 69.0)}


def quality_inputs(n_rows: int, rng: np.random.Generator, shift: float = 0.0) -> pd.DataFrame:
    """Parts as the inspection sees them; ``shift`` in [0, 1] moves thickness and temperature
    from rule 1's material (0) to rule 2's (1)."""
    line = rng.choice(_LINES, size=n_rows)
    thickness = rng.normal(2.0 + 0.7 * shift, 0.18, n_rows)
    temperature = rng.normal(60.0 + 9.0 * shift, 3.0, n_rows)
    speed = rng.uniform(20.0, 40.0, n_rows)
    return pd.DataFrame({
        "line": line.astype(object),
        "thickness_mm": np.round(thickness, 3),
        "temperature_c": np.round(temperature, 1),
        "speed_m_min": np.round(speed, 1),
    })


def quality_verdict(row: dict[str, object] | pd.DataFrame, rule: int = 1) -> object:
    """The true label of a part under ``rule`` (1 or 2): ``reject`` when the part is too far
    from the nominal thickness/temperature of its material, or run too fast when hot."""
    nominal_t, nominal_c = _RULES[rule]
    if isinstance(row, pd.DataFrame):
        offset = row["line"].map(_LINE_OFFSET).fillna(0.0).to_numpy()
        score = (np.abs(row["thickness_mm"].to_numpy() - nominal_t) * 5.0
                 + np.abs(row["temperature_c"].to_numpy() - nominal_c) / 4.0
                 + (row["speed_m_min"].to_numpy() - 30.0) / 10.0 + offset)
        return np.where(score > 1.6, "reject", "ok").astype(object)
    t, c = float(row["thickness_mm"]), float(row["temperature_c"])  # type: ignore[arg-type]
    speed = float(row["speed_m_min"])  # type: ignore[arg-type]
    score = (abs(t - nominal_t) * 5.0 + abs(c - nominal_c) / 4.0 + (speed - 30.0) / 10.0
             + _LINE_OFFSET.get(str(row["line"]), 0.0))
    return "reject" if score > 1.6 else "ok"


def quality_check(n_rows: int = 1500, seed: int = 17, rule: int = 1, shift: float = 0.0,
                  label_noise: float = 0.02) -> pd.DataFrame:
    """Inspected parts with their ``verdict`` under ``rule`` (about 2 % label noise)."""
    rng = np.random.default_rng(seed)
    frame = quality_inputs(n_rows, rng, shift)
    verdict = np.asarray(quality_verdict(frame, rule), dtype=object)
    flip = rng.random(n_rows) < label_noise
    verdict = np.where(flip, np.where(verdict == "ok", "reject", "ok"), verdict)
    frame["verdict"] = verdict.astype(object)
    return frame


DEFAULTS = {
    "machine_health.csv": lambda: machine_health(2000, seed=7),
    "support_tickets.csv": lambda: support_tickets(1200, seed=11),
    "machine_load.csv": lambda: machine_load(3000, seed=13),
    "quality_check.csv": lambda: quality_check(1500, seed=17),
}


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` as CSV (``\\n`` line ends, no index) atomically."""
    return atomic_write(path, frame.to_csv(index=False, lineterminator="\n"))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    outdir = Path(args[0]) if args else Path("models/data")
    for name, make in DEFAULTS.items():
        path = write_csv(make(), outdir / name)
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
