"""``package``: a registered model -> ``<name>-<version>-<target>.edgeml`` for one device profile.

The work is the ordered list of stages in :mod:`edgeml.package.stages` (load, convert, parity,
quantize, selftest, threads, fit, wheels, manifest, sign, write); this module runs them with a
progress display and returns what they made. Nothing is written until every check has passed.

Repackaging the same entry for the same target with the same libraries gives the same bytes:
``created_at`` comes from the registry entry and the manifest holds no timings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from edgeml.bundle.manifest import Manifest
from edgeml.errors import UsageError
from edgeml.package.fit import MemoryFit
from edgeml.package.policy import POLICIES
from edgeml.package.profiles import load_profile
from edgeml.package.quality import QuantizationOutcome
from edgeml.package.stages import STAGES, Build, Request, StageRecord, need, run_stage
from edgeml.package.threads import ThreadChoice

__all__ = ["PackageResult", "package"]


@dataclass(frozen=True)
class PackageResult:
    """What ``package`` wrote and measured."""

    path: Path
    manifest: Manifest
    size_bytes: int
    memory: MemoryFit
    quantization: QuantizationOutcome
    parity: dict[str, Any]
    threads: ThreadChoice
    stages: tuple[StageRecord, ...] = ()
    wheels: list[str] = field(default_factory=list)
    signed: bool = False

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "path": str(self.path),
            "ref": m.ref,
            "target": m.target.name,
            "size_bytes": self.size_bytes,
            "model_bytes": self.memory.model_bytes,
            "onnx": {"opset": m.onnx.opset, "ir_version": m.onnx.ir_version,
                     "min_onnxruntime": m.onnx.min_onnxruntime, "quantized": m.onnx.quantized},
            "memory": self.memory.to_dict(),
            "quantization": {**self.quantization.manifest_block(), "report": self.quantization.report},
            "threads": self.threads.to_dict(),
            "parity": self.parity,
            "stages": [{**r.to_manifest(), "shown": r.shown} for r in self.stages],
            "wheels": self.wheels,
            "signed": self.signed,
        }

    @classmethod
    def from_build(cls, b: Build) -> PackageResult:
        path = need(b.path, "path")
        return cls(
            path=path, manifest=need(b.manifest, "manifest"), size_bytes=path.stat().st_size,
            memory=need(b.memory, "memory"), quantization=need(b.quantization, "quantization"),
            parity=b.parity, threads=need(b.threads, "threads"), stages=b.log,
            wheels=sorted(n.removeprefix("wheels/") for n in b.members if n.startswith("wheels/")),
            signed=b.request.sign_key is not None,
        )


def run_stages(start: Build, console: Console) -> Build:
    """Every stage of :data:`STAGES` in order: a spinner while it runs, then a tick (or a dash
    for a skipped stage) and what it found, on ``console``."""
    b = start
    for stage in STAGES:
        title = stage.title(b.request)
        with console.status(title + "..."):
            b = run_stage(stage, b)
        record = b.log[-1]
        if record.outcome == "ok":
            console.print(f"[green]✓[/green] {escape(title)} [dim]({escape(record.shown)})[/dim]",
                          highlight=False)
        else:
            console.print(f"[dim]- {escape(title)} ({record.outcome}: {escape(record.shown)})[/dim]",
                          highlight=False)
    return b


def package(
    ref: str,
    *,
    target: str | Path,
    registry: Path,
    out_dir: Path,
    quantize: str | None = None,
    offline: bool = False,
    sign_key: Path | None = None,
    devices_dir: Path | None = None,
    console: Console | None = None,
) -> PackageResult:
    """Package registry entry ``ref`` for device profile ``target``; see the module docstring.

    ``quantize`` is one of :data:`edgeml.package.policy.POLICIES` (default: the profile's policy).
    """
    from edgeml.package.keys import load_private_key

    profile = load_profile(target, devices_dir)
    policy = quantize or profile.quantization.policy
    if policy not in POLICIES:
        raise UsageError(f"--quantize {policy!r} is not one of {', '.join(POLICIES)}")
    if sign_key is not None:
        load_private_key(sign_key)  # a bad key fails now, not after the work
    request = Request(ref=ref, profile=profile, registry=Path(registry), out_dir=Path(out_dir),
                      policy=policy, offline=offline, sign_key=sign_key)
    done = run_stages(Build(request), console or Console(stderr=True))
    return PackageResult.from_build(done)
