"""A strict reader of the Prometheus text exposition format 0.0.4, for tests."""

from __future__ import annotations

import re
from typing import Any

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? (\S+)$")


def parse_prometheus(text: str) -> dict[str, dict[str, Any]]:
    """{family: {"type", "help", "samples": [(name, {labels}, value)]}}; asserts on bad lines."""
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and help_text
            families.setdefault(name, {"samples": []})["help"] = help_text
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert "type" not in families.get(name, {}), f"second TYPE for {name}"
            families.setdefault(name, {"samples": []})["type"] = kind
            current = name
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        name, labels_text, value = m.groups()
        assert current is not None and (name == current or name.startswith(current + "_")), line
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels_text or ""))
        number = float(value.replace("+Inf", "inf"))
        families[current]["samples"].append((name, labels, number))
    for name, fam in families.items():
        if fam.get("type") == "histogram":
            buckets = [(s[1]["le"], s[2]) for s in fam["samples"] if s[0] == f"{name}_bucket"]
            counts = [c for _, c in buckets]
            assert counts == sorted(counts), "histogram buckets must be cumulative"
            assert buckets[-1][0] == "+Inf"
            count = next(s[2] for s in fam["samples"] if s[0] == f"{name}_count")
            assert buckets[-1][1] == count
    return families


def sample_value(families: dict[str, Any], metric: str, **labels: str) -> float:
    family = metric if metric in families else metric.rsplit("_", 1)[0]
    for sample, sample_labels, value in families[family]["samples"]:
        if sample == metric and all(sample_labels.get(k) == v for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no sample {metric}{labels}")
