"""Documentation stays true: every command has help text and a README example."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from edgeml.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    for name, cmd in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        out.append((full, cmd))
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, full + " "))
    return out


COMMANDS = _commands(cli)


def test_there_are_commands() -> None:
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_command_has_help(name: str, cmd: click.Command) -> None:
    assert cmd.help and len(cmd.help.strip()) > 20, f"`edgeml {name}` has no help text"
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert param.help, f"`edgeml {name}` option {param.opts[0]} has no help text"


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_command_has_readme_example(name: str, cmd: click.Command) -> None:
    text = README.read_text()
    if isinstance(cmd, click.Group):
        pattern = rf"edgeml {re.escape(name)} \w"
    else:
        pattern = rf"edgeml {re.escape(name)}\b"
    assert re.search(pattern, text), f"README has no example of `edgeml {name}`"
