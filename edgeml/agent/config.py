"""The agent's configuration file and its settings object (device-safe: no YAML library).

The file (``--config /etc/edgeml/agent.yaml``) is JSON when its first non-blank character
is ``{``, otherwise a small YAML subset parsed here::

    # comments, blank lines
    device_id: pump-7          # key: value; values are null/true/false, integers, floats,
    fleet: plant-3             # 'single' or "double" quoted strings, or bare strings
    mqtt:                      # a key with nothing after ':' opens a section, nested by
      broker: mqtt://10.0.0.2  # indentation (spaces only); lists, anchors, multi-line
      base_topic: edgeml       # strings and flow style ({...}, [...]) are not supported

Sections are only for grouping: ``mqtt: {broker: ...}`` and ``broker: ...`` mean the
same. Keys are the ``edgeml agent`` option names (dashes or underscores, see
:data:`KEYS`); an unknown or repeated key is an error naming the file, line and key.
Precedence: command-line flags > ``$EDGEML_AGENT_<OPTION>`` > this file > defaults.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeml.agent.install import InstallPolicy
from edgeml.errors import UsageError
from edgeml.runtime.settings import ServeSettings

__all__ = ["KEYS", "AgentSettings", "load_config", "parse_yaml_subset"]

# every option of `edgeml agent` that a config file may set (the CLI test checks the match)
KEYS = frozenset({
    "state_dir", "bundle", "public_key", "allow_unsigned", "target", "arch", "window",
    "chunk_timeout", "host", "port", "workers", "threads", "max_batch", "broker", "username",
    "password", "tls_ca", "tls_cert", "tls_key", "tls_insecure", "mqtt_version", "keepalive",
    "device_id", "fleet", "base_topic", "metrics_interval", "reconnect_max_delay",
    "log_level", "http_token", "sample_rate", "sample_max_per_minute",
})
_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_-]*)\s*:(?:\s+(?P<value>.*))?$")
_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")


def _scalar(text: str, where: str) -> Any:
    text = text.strip()
    if text[:1] in ("'", '"'):
        quote = text[0]
        end = text.find(quote, 1)
        if end < 0:
            raise UsageError(f"{where}: unterminated string")
        rest = text[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise UsageError(f"{where}: unexpected {rest!r} after the string")
        return text[1:end]
    text = re.split(r"\s+#", text, maxsplit=1)[0].strip()
    if text[:1] in ("[", "{", "&", "*", "|", ">", "-") and not _FLOAT.match(text):
        raise UsageError(f"{where}: {text!r}: lists, flow style, anchors and block strings are "
                         "not supported (see edgeml.agent.config)")
    if text in ("", "null", "~", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE", "yes"):
        return True
    if text in ("false", "False", "FALSE", "no"):
        return False
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def parse_yaml_subset(text: str, name: str = "config") -> dict[str, Any]:
    """Parse the YAML subset of the module docstring into nested dicts."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(0, root)]
    pending: tuple[int, dict[str, Any], str] | None = None  # a section awaiting its children
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{name}:{number}"
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise UsageError(f"{where}: indent with spaces, not tabs")
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        match = _LINE.match(raw.rstrip())
        if match is None:
            raise UsageError(f"{where}: expected 'key: value' (got {raw.strip()!r})")
        indent, key, value = len(match["indent"]), match["key"], match["value"]
        if pending is not None:
            p_indent, p_parent, p_key = pending
            if indent > p_indent:  # the section's first child sets its indentation
                child: dict[str, Any] = {}
                p_parent[p_key] = child
                stack.append((indent, child))
            pending = None
        while len(stack) > 1 and indent < stack[-1][0]:
            stack.pop()
        if indent != stack[-1][0]:
            raise UsageError(f"{where}: inconsistent indentation")
        parent = stack[-1][1]
        if key in parent:
            raise UsageError(f"{where}: {key!r} appears twice")
        if value is None or value.strip() == "" or value.strip().startswith("#"):
            parent[key] = None
            pending = (indent, parent, key)
        else:
            parent[key] = _scalar(value, where)
    return root


def _flatten(tree: dict[str, Any], name: str, out: dict[str, Any]) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            _flatten(value, name, out)
            continue
        norm = key.replace("-", "_")
        if norm not in KEYS:
            raise UsageError(f"{name}: unknown key {key!r} (known: {', '.join(sorted(KEYS))})")
        if norm in out:
            raise UsageError(f"{name}: {key!r} is set twice")
        out[norm] = value


def load_config(path: str | Path) -> dict[str, Any]:
    """The file's settings as ``{option_name: value}`` (flat, underscores)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"config {p}: cannot read ({exc})") from exc
    if text.lstrip().startswith("{"):
        try:
            tree = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"config {p}: not valid JSON ({exc})") from exc
        if not isinstance(tree, dict):
            raise UsageError(f"config {p}: expected an object")
    else:
        tree = parse_yaml_subset(text, str(p))
    out: dict[str, Any] = {}
    _flatten(tree, str(p), out)
    return out


@dataclass(frozen=True)
class AgentSettings:
    """Everything ``edgeml agent`` needs: the state folder, what it accepts, how it serves."""

    state_dir: Path
    serve: ServeSettings  # broker required; telemetry.spool_dir is <state_dir>/spool
    policy: InstallPolicy
    bundle: Path | None = None  # installed as the first committed slot when there is none
    window: int = 8  # chunks in flight
    chunk_timeout: float = 3.0  # seconds before a chunk asked for is asked again
    # (and the timeout of each HTTP connect/read when the bundle comes from a URL)
    http_token: str | None = None  # bearer token sent with HTTP(S) bundle downloads

    def __post_init__(self) -> None:
        if self.serve.broker is None:
            raise UsageError("the agent needs a broker (--broker mqtt://HOST[:PORT])")
        if not 1 <= self.window <= 256:
            raise UsageError(f"window {self.window} must be between 1 and 256 chunks")
        if not self.chunk_timeout > 0:
            raise UsageError(f"chunk timeout {self.chunk_timeout} must be > 0 seconds")
