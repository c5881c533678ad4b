"""``package``: a registered model -> ``<name>-<version>-<target>.edgeml`` for one device profile.

Steps (nothing is written until every check has passed):

1. load the device profile and resolve the registry entry;
2. convert the pipeline with :func:`edgeml.convert.to_onnx` at the profile's opset, ML opset
   and IR version limits;
3. parity gate on the holdout (:func:`edgeml.convert.check_parity`, ParityError names rows);
4. quantization per policy (:mod:`edgeml.package.quality`): size, holdout metric and batch-1
   latency before/after, refused beyond the profile's ``max_metric_drop``;
5. fit: opsets and IR version within the profile, RAM within its budget (:mod:`.fit`);
6. self-test rows (:mod:`.selftest`), manifest, optional wheels (:mod:`.wheels`) and signature;
7. a deterministic zip (:mod:`.writer`) written to a temporary name, then ``os.replace``.

Repackaging the same entry for the same target with the same libraries gives the same bytes:
``created_at`` comes from the registry entry and the manifest holds no timings.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeml import __version__
from edgeml.bundle.manifest import (
    MANIFEST,
    MODEL,
    SELFTEST,
    SIGNATURE,
    TASKS,
    InputSpec,
    Manifest,
    OnnxInfo,
    TargetInfo,
)
from edgeml.errors import ConversionError, PackagingError
from edgeml.package.fit import MemoryFit, check_memory, check_opsets
from edgeml.package.profiles import DeviceProfile, load_profile
from edgeml.package.quality import QuantizationOutcome, apply_policy
from edgeml.package.selftest import build_selftest, selftest_bytes
from edgeml.package.wheels import download_wheels, install_notes
from edgeml.package.writer import file_hashes, write_bundle

__all__ = ["PackageResult", "package"]

_INPUT_FIELDS = {f.name for f in fields(InputSpec)}
_CONVERT_LIBS = ("skl2onnx", "onnx", "onnxruntime", "onnxmltools")


@dataclass(frozen=True)
class PackageResult:
    """What ``package`` wrote and measured."""

    path: Path
    manifest: Manifest
    size_bytes: int
    memory: MemoryFit
    quantization: QuantizationOutcome
    parity: dict[str, Any]
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
            "parity": self.parity,
            "wheels": self.wheels,
            "signed": self.signed,
        }


class _Steps:
    """Rich progress on stderr: a spinner per step, a tick and a figure when it is done."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextmanager
    def step(self, text: str) -> Iterator[list[str]]:
        note: list[str] = []
        with self.console.status(text + "..."):
            yield note
        self.console.print(f"[green]✓[/green] {text}" + (f" [dim]({note[0]})[/dim]" if note else ""),
                           highlight=False)


def _versions() -> dict[str, str]:
    out = {}
    for lib in _CONVERT_LIBS:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _inputs(meta: dict[str, Any]) -> list[InputSpec]:
    try:
        return [InputSpec(**{k: v for k, v in f.items() if k in _INPUT_FIELDS}) for f in meta["features"]]
    except (KeyError, TypeError) as exc:
        raise PackagingError(f"model.json features are not usable as bundle inputs: {exc}") from exc


def _provenance(entry: Any, profile: DeviceProfile) -> dict[str, Any]:
    meta = entry.meta
    data = meta.get("data") or {}
    model = meta.get("model") or {}
    return {
        "registry_ref": entry.ref,
        "recipe_sha256": meta.get("recipe_sha256"),
        "data_sha256": data.get("sha256"),
        "data_source": data.get("source"),
        "family": model.get("family"),
        "params": model.get("params"),
        "trained_with": meta.get("libraries") or {},
        "packaged_with": {"edgeml": __version__, **_versions()},
        "profile": {"name": profile.name, "os": profile.os, "python": profile.python,
                    "onnxruntime": profile.onnxruntime},
    }


def _canonical(model: Any, name: str) -> bytes:
    """Same pipeline, same bytes: skl2onnx names the graph with a random uuid and lists the opset
    imports in set order (which changes with PYTHONHASHSEED); fix both."""
    model.graph.name = name
    imports = sorted(((o.domain, o.version) for o in model.opset_import), key=lambda d: d[0])
    del model.opset_import[:]
    for domain, version in imports:
        model.opset_import.add(domain=domain, version=version)
    return bytes(model.SerializeToString())


def _int8_fits(outcome: QuantizationOutcome, float_model: bytes, profile: DeviceProfile) -> QuantizationOutcome:
    """onnxruntime's quantizer lifts models below opset 11 to 11: that may exceed the profile."""
    if not outcome.applied:
        return outcome
    from edgeml.convert import ir_version_of, opsets_of

    try:
        check_opsets(opsets_of(outcome.model), ir_version_of(outcome.model), profile)
    except PackagingError as exc:
        if outcome.policy == "int8":
            raise PackagingError(f"int8 model refused: {exc}") from exc
        return replace(outcome, model=float_model, applied=False,
                       reason=f"int8 does not fit ({exc}); shipping float")
    return outcome


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

    ``quantize`` is ``auto`` | ``int8`` | ``none`` (default: the profile's policy).
    """
    from edgeml.convert import check_parity, ir_version_of, min_onnxruntime, opsets_of, to_onnx
    from edgeml.package.keys import load_private_key, sign_manifest
    from edgeml.train.registry import Registry

    steps = _Steps(console or Console(stderr=True))
    profile = load_profile(target, devices_dir)
    policy = quantize or profile.quantization.policy
    if sign_key is not None:
        load_private_key(sign_key)  # a bad key fails now, not after the work
    entry = Registry(registry).resolve(ref)
    meta = entry.meta
    task = str(meta.get("task"))
    if task not in TASKS:
        raise PackagingError(f"{entry.ref}: model.json task {task!r} is not one of {', '.join(TASKS)}")
    classes = (meta.get("target") or {}).get("classes")
    inputs = _inputs(meta)

    with steps.step(f"load {entry.ref}") as note:
        pipeline = entry.load_pipeline()
        X, y = entry.load_holdout()
        note.append(f"{(meta.get('model') or {}).get('family')}, {len(X)} holdout rows")
    with steps.step(f"convert to ONNX for {profile.name}") as note:
        try:
            exported = to_onnx(pipeline, meta["features"], task=task, classes=classes,
                               runtime=profile.runtime_limits)
        except ConversionError as exc:
            raise type(exc)(
                f"{entry.ref} for {profile.name} (onnxruntime {profile.onnxruntime}: ai.onnx opset "
                f"<= {profile.max_opset}, ai.onnx.ml <= {profile.max_ml_opset}, IR <= "
                f"{profile.max_ir_version}): {exc}"
            ) from exc
        model = _canonical(exported.model, entry.name)
        check_opsets(exported.opsets, exported.ir_version, profile)
        note.append(f"opset {exported.opset}, IR {exported.ir_version}, {len(model):,} bytes")
    with steps.step("parity gate on the holdout") as note:
        parity = check_parity(pipeline, model, X, task=task, classes=classes).to_dict()
        note.append(f"{parity['rows']} rows agree")
    with steps.step(f"quantization ({policy})") as note:
        outcome = apply_policy(
            model, X, y, meta, policy=policy, max_metric_drop=profile.quantization.max_metric_drop,
            float_labels=lambda: pipeline.predict(X),
        )
        outcome = _int8_fits(outcome, model, profile)
        model = outcome.model
        note.append(("int8: " if outcome.applied else "float: ") + outcome.reason)
    opsets, ir_version = opsets_of(model), ir_version_of(model)
    check_opsets(opsets, ir_version, profile)
    outputs = exported.output_spec
    with steps.step("self-test rows") as note:
        selftest = build_selftest(model, inputs, outputs, X)
        note.append(f"{len(selftest['rows'])} rows, atol {selftest['atol']:g}")
    with steps.step(f"memory on {profile.name}") as note, tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / MODEL
        model_path.write_bytes(model)
        memory = check_memory(model_path, profile, inputs=inputs, rows=selftest["rows"], what=entry.ref)
        note.append(f"+{memory.added_mb:.1f} MiB, {memory.total_mb:.0f} of {profile.memory_budget_mb} MiB")
    members: dict[str, bytes] = {MODEL: model, SELFTEST: selftest_bytes(selftest)}
    if offline:
        with steps.step(f"download wheels for {profile.name}") as note:
            members.update(download_wheels(profile, created_at=meta["created_at"]))
            note.append(f"{len(members) - 2} wheels")
    manifest = Manifest(
        name=entry.name,
        version=entry.version,
        task=task,
        created_at=meta["created_at"],
        edgeml_version=__version__,
        target=TargetInfo(name=profile.name, arch=profile.arch,
                          intra_op_threads=profile.threads.intra_op,
                          inter_op_threads=profile.threads.inter_op,
                          memory_budget_mb=profile.memory_budget_mb),
        onnx=OnnxInfo(opset=opsets.get("", 0), ir_version=ir_version,
                      min_onnxruntime=min_onnxruntime(model), quantized=outcome.applied),
        inputs=inputs,
        outputs=outputs,
        files=file_hashes(members),
        metrics=meta.get("metrics") or {},
        parity=parity,
        reference_profile=meta.get("reference_profile") or {},
        provenance=_provenance(entry, profile),
        quantization=outcome.manifest_block(),
        install=install_notes(profile, offline=offline),
    )
    manifest.validate()
    members[MANIFEST] = manifest.to_json()
    if sign_key is not None:
        members[SIGNATURE] = sign_manifest(members[MANIFEST], sign_key) + b"\n"
    path = write_bundle(Path(out_dir) / manifest.filename, members, manifest.created_at)
    steps.console.print(f"[green]✓[/green] wrote {path} ({path.stat().st_size:,} bytes)", highlight=False)
    return PackageResult(
        path=path, manifest=manifest, size_bytes=path.stat().st_size, memory=memory,
        quantization=outcome, parity=parity,
        wheels=sorted(n.removeprefix("wheels/") for n in members if n.startswith("wheels/")),
        signed=sign_key is not None,
    )
