"""Documentation stays true: every command has help text and a README example."""

from __future__ import annotations

import ast
import importlib
import re
import types
import typing
from pathlib import Path
from typing import Any

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


# -- the Python API: short imports, each package's __all__ is what README documents ---------

PUBLIC_PACKAGES = ("edgeml.bundle", "edgeml.runtime", "edgeml.train")


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _readme_imports() -> dict[str, set[str]]:
    """module -> names imported from it by the README's Python examples."""
    out: dict[str, set[str]] = {}
    for block in _python_blocks():
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgeml"):
                out.setdefault(str(node.module), set()).update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("edgeml.") for a in node.names), (
                    f"README imports a deep module: {[a.name for a in node.names]}")
    return out


def test_readme_python_examples_use_the_short_public_imports() -> None:
    imports = _readme_imports()
    assert set(PUBLIC_PACKAGES) <= set(imports)
    for module, names in imports.items():
        mod = importlib.import_module(module)
        public = getattr(mod, "__all__", None)
        assert public is not None, f"README imports from {module}, which has no __all__"
        for name in names:
            assert name in public, f"README imports {name} from {module}, not in its __all__"
            assert getattr(mod, name) is not None


@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_package_all_is_what_the_readme_documents(package: str) -> None:
    mod = importlib.import_module(package)
    documented = _readme_imports().get(package, set())
    assert sorted(mod.__all__) == sorted(documented), (
        f"{package}.__all__ and README's Python API differ: "
        f"undocumented {sorted(set(mod.__all__) - documented)}, "
        f"not exported {sorted(documented - set(mod.__all__))}")
    for name in mod.__all__:  # every public name resolves (lazy ones too)
        assert getattr(mod, name) is not None


def test_readme_device_example_runs(penguins_bundle: tuple[Path, Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The first Python example, as written, on a real penguins bundle."""
    bundle, _registry = penguins_bundle
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "penguins-1-x86_64.edgeml").symlink_to(bundle)
    monkeypatch.chdir(tmp_path)
    device = _python_blocks()[0]
    assert "from edgeml.runtime import Predictor" in device
    exec(compile(device, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert ("selftest", "ok") in ast.literal_eval(out[0])
    assert out[1].startswith("penguins@1 f1_macro 0.9")
    assert ast.literal_eval(out[2])["predictions"][0]["label"] == "Gentoo"


# -- model.json: every field of the schema is in README's reference, and nothing else ---------


def _schema_paths(model: Any, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    out: list[str] = []
    for name, info in model.model_fields.items():
        path = prefix + name
        out.append(path)
        ann = info.annotation
        union = typing.get_origin(ann) in (typing.Union, types.UnionType)
        for arg in [a for a in typing.get_args(ann) if a is not type(None)] if union else [ann]:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out += _schema_paths(arg, path + ".")
            elif typing.get_origin(arg) is list:
                (inner,) = typing.get_args(arg)
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    out += _schema_paths(inner, path + "[].")
    return out


def test_model_json_reference_documents_every_field() -> None:
    from edgeml.train.model_json import ModelJson

    text = README.read_text()
    section = text[text.index("### `model.json` reference"):]
    section = section[:section.index("\n### ", 1)]
    documented = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert documented == list(dict.fromkeys(documented)), "a field is documented twice"
    schema = _schema_paths(ModelJson)
    assert sorted(set(schema) - set(documented)) == [], "fields missing from README"
    assert sorted(set(documented) - set(schema)) == [], "README documents fields that do not exist"
