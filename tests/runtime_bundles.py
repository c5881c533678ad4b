"""Real bundles for the runtime tests: train a recipe into a tmp registry, package it for x86_64.

Built once per test session (cached here, keyed by recipe) because training takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_cache: dict[str, tuple[Path, Path]] = {}


def real_bundle(factory: pytest.TempPathFactory, recipe: str = "penguins") -> tuple[Path, Path]:
    """(bundle path, registry path) for ``models/<recipe>.yaml`` packaged for x86_64."""
    if recipe not in _cache:
        from rich.console import Console

        from edgeml.package.builder import package
        from edgeml.train.workflow import train

        root = factory.mktemp(f"real-{recipe}")
        registry = root / "registry"
        quiet = Console(quiet=True)
        train(REPO / "models" / f"{recipe}.yaml", registry=registry, console=quiet)
        result = package(recipe, target="x86_64", registry=registry, out_dir=root / "bundles",
                         console=quiet)
        _cache[recipe] = (Path(result.path), registry)
    return _cache[recipe]


class ServerProcess:
    """``edgeml serve BUNDLE --port 0 ...`` (HTTP only) in a real process."""

    def __init__(self, bundle: Path, *args: str) -> None:
        import re
        import subprocess
        import sys
        import tempfile

        # stderr goes to a file: a pipe nobody drains would block the server once full
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeml", "serve", str(bundle), "--port", "0",
             "--log-level", "warning", *args],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        assert self.proc.stdout is not None
        self.banner: list[str] = []
        line = ""
        while not line.startswith("http: "):
            line = self.proc.stdout.readline()
            if not line:
                break
            self.banner.append(line)
        match = re.search(r"^http: http://([\d.]+):(\d+)", line)
        if match is None:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"server did not start: {self.banner!r} {self.read_stderr()}")
        self.host, self.port = match.group(1), int(match.group(2))

    def stop(self) -> str:
        """Stop the server (SIGTERM, by pid); return what it wrote on stderr."""
        self.proc.terminate()
        self.proc.communicate(timeout=20)
        return self.read_stderr()

    def read_stderr(self) -> str:
        self.stderr.seek(0)
        text = self.stderr.read()
        self.stderr.close()
        return str(text)
