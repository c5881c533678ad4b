"""``edgeml package`` as one ordered list of named stages.

Each stage is a function ``Build -> Build``: it reads the target's state so far and returns a
new frozen :class:`Build` with what it added and one :class:`StageRecord` appended to ``log``
(its outcome, a deterministic ``detail`` and a ``shown`` line for the progress display, which
may carry timings). :data:`STAGES` is the order; the progress display
(:func:`edgeml.package.builder.package`), the manifest (``build.stages``) and the tests all
read it. Nothing is written until every check has passed: the bundle file appears in the last
stage.

==========  ==========================================================================
load        resolve the registry entry, load the pipeline and the holdout
convert     whole pipeline -> ONNX within the profile's opset/ML opset/IR limits
parity      ONNX agrees with scikit-learn on the holdout (ParityError names rows)
quantize    the policy (auto | int8 | none, :mod:`.policy`) judged on the holdout
selftest    up to 16 holdout rows and the shipped model's outputs for them
threads     intra-op threads: 1, or the profile's cores where measured clearly faster
fit         opsets and IR version of the model that ships (checked once, here), and
            its RAM in onnxruntime within the profile's budget
wheels      with ``--offline``: the wheels the target installs from (else skipped)
manifest    manifest.json, with ``build.stages`` = the records of the stages above
sign        with ``--sign-key``: manifest.sig (else skipped)
write       the deterministic zip, written to a temporary name and renamed
==========  ==========================================================================
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from edgeml import __version__
from edgeml.bundle.derive import derive_rows
from edgeml.bundle.feeds import rows_to_columns, to_feeds
from edgeml.bundle.manifest import (
    MANIFEST,
    MODEL,
    SELFTEST,
    SIGNATURE,
    TASKS,
    DerivedInput,
    InputSpec,
    Manifest,
    OnnxInfo,
    RuntimeInfo,
    TargetInfo,
)
from edgeml.errors import ConversionError, PackagingError
from edgeml.package.fit import MemoryFit, check_memory, check_opsets
from edgeml.package.profiles import DeviceProfile
from edgeml.package.quality import QuantizationOutcome, apply_policy
from edgeml.package.selftest import build_selftest, selftest_bytes
from edgeml.package.threads import ThreadChoice, choose_threads
from edgeml.package.wheels import download_wheels, install_notes
from edgeml.package.writer import file_hashes, write_bundle

__all__ = ["STAGES", "Build", "Request", "Stage", "StageRecord", "run_stage"]

T = TypeVar("T")
_CONVERT_LIBS = ("skl2onnx", "onnx", "onnxruntime", "onnxmltools")


@dataclass(frozen=True)
class Request:
    """What the user asked for (the profile is loaded and the signing key checked already)."""

    ref: str
    profile: DeviceProfile
    registry: Path
    out_dir: Path
    policy: str
    offline: bool = False
    sign_key: Path | None = None


@dataclass(frozen=True)
class StageRecord:
    name: str
    outcome: str  # ok | skipped
    detail: str  # deterministic: written to the manifest
    shown: str = ""  # for the progress display (may carry timings); defaults to ``detail``

    def to_manifest(self) -> dict[str, str]:
        return {"name": self.name, "outcome": self.outcome, "detail": self.detail}


@dataclass(frozen=True)
class Build:
    """One target's state flowing through the stages; each stage fills in its part."""

    request: Request
    entry: Any = None  # edgeml.train.registry.Entry
    pipeline: Any = None
    X: Any = None
    y: Any = None
    inputs: tuple[InputSpec, ...] = ()
    derived: tuple[DerivedInput, ...] = ()  # raw timestamps -> derived inputs (edgeml.bundle.derive)
    raw: Any = None  # the holdout's raw values of the derived inputs (aligned with X)
    exported: Any = None  # edgeml.convert.ExportResult
    float_model: bytes = b""
    parity: dict[str, Any] = field(default_factory=dict)
    quantization: QuantizationOutcome | None = None
    selftest: dict[str, Any] | None = None
    threads: ThreadChoice | None = None
    memory: MemoryFit | None = None
    members: Mapping[str, bytes] = field(default_factory=dict)
    manifest: Manifest | None = None
    path: Path | None = None
    log: tuple[StageRecord, ...] = ()

    @property
    def profile(self) -> DeviceProfile:
        return self.request.profile

    @property
    def model(self) -> bytes:
        """The model that ships: int8 when the quantize stage chose it, else the float one."""
        return self.quantization.model if self.quantization is not None else self.float_model

    @property
    def meta(self) -> dict[str, Any]:
        return dict(need(self.entry, "entry").meta)

    def done(self, name: str, detail: str, shown: str = "", outcome: str = "ok", **changes: Any) -> Build:
        record = StageRecord(name, outcome, detail, shown or detail)
        return replace(self, log=(*self.log, record), **changes)


def need(value: T | None, what: str) -> T:
    """A field an earlier stage fills in; missing means the stages ran out of order."""
    if value is None:
        raise PackagingError(f"internal: {what} is not set (a stage ran before the one that makes it)")
    return value


# -- the stages --------------------------------------------------------------------------------


def load(b: Build) -> Build:
    from edgeml.train.registry import Registry

    entry = Registry(b.request.registry).resolve(b.request.ref)
    task = str(entry.meta.get("task"))
    if task not in TASKS:
        raise PackagingError(f"{entry.ref}: model.json task {task!r} is not one of {', '.join(TASKS)}")
    pipeline = entry.load_pipeline()
    X, y = entry.load_holdout()
    derived = tuple(entry.record.derived_inputs())
    raw = None
    if derived:
        import pandas as pd

        raw = pd.read_parquet(entry.file("holdout"), columns=[d.source for d in derived])
    family = (entry.meta.get("model") or {}).get("family")
    return b.done("load", f"{entry.ref}: {family}, {len(X)} holdout rows", entry=entry,
                  pipeline=pipeline, X=X, y=y, inputs=tuple(entry.record.input_specs()),
                  derived=derived, raw=raw)


def _canonical(model: Any, name: str) -> bytes:
    """Same pipeline, same bytes: skl2onnx names the graph with a random uuid and lists the opset
    imports in set order (which changes with PYTHONHASHSEED); fix both."""
    model.graph.name = name
    imports = sorted(((o.domain, o.version) for o in model.opset_import), key=lambda d: d[0])
    del model.opset_import[:]
    for domain, version in imports:
        model.opset_import.add(domain=domain, version=version)
    return bytes(model.SerializeToString())


def _classes(b: Build) -> Any:
    return (b.meta.get("target") or {}).get("classes")


def convert(b: Build) -> Build:
    from edgeml.convert import to_onnx

    p, entry = b.profile, need(b.entry, "entry")
    try:
        exported = to_onnx(b.pipeline, b.meta["features"], task=b.meta["task"], classes=_classes(b),
                           runtime=p.runtime_limits)
    except ConversionError as exc:
        raise type(exc)(
            f"{entry.ref} for {p.name} (onnxruntime {p.onnxruntime}: ai.onnx opset <= {p.max_opset}, "
            f"ai.onnx.ml <= {p.max_ml_opset}, IR <= {p.max_ir_version}): {exc}"
        ) from exc
    model = _canonical(exported.model, entry.name)
    return b.done("convert", f"opset {exported.opset}, IR {exported.ir_version}, {len(model):,} bytes",
                  exported=exported, float_model=model)


def parity(b: Build) -> Build:
    from edgeml.convert import check_parity

    report = check_parity(b.pipeline, b.float_model, b.X, task=b.meta["task"], classes=_classes(b),
                          derived=b.derived, raw=b.raw)
    result = report.to_dict()
    return b.done("parity", f"{result['rows']} rows agree", parity=result)


def quantize(b: Build) -> Build:
    p, policy = b.profile, b.request.policy
    outcome = apply_policy(
        b.float_model, b.X, b.y, b.meta, policy=policy,
        max_metric_drop=p.quantization.max_metric_drop, max_opset=p.max_opset,
        target=f"{p.name} (onnxruntime {p.onnxruntime})", float_labels=lambda: b.pipeline.predict(b.X),
    )
    detail = ("int8: " if outcome.applied else "float: ") + outcome.reason
    return b.done("quantize", detail, outcome="ok" if policy != "none" else "skipped",
                  quantization=outcome)


def selftest(b: Build) -> Build:
    rows = build_selftest(b.model, b.inputs, need(b.exported, "exported").output_spec, b.X,
                          b.derived, b.raw)
    return b.done("selftest", f"{len(rows['rows'])} rows, atol {rows['atol']:g}", selftest=rows)


def threads(b: Build) -> Build:
    rows = need(b.selftest, "selftest")["rows"]
    choice = choose_threads(b.model, to_feeds(b.inputs, rows_to_columns(rows), b.derived), b.profile)
    n = choice.intra_op
    detail = f"{n} intra-op thread{'s' if n != 1 else ''} ({choice.chosen_by})"
    return b.done("threads", detail, shown=f"{n}: {choice.reason}", threads=choice)


def fit(b: Build) -> Build:
    from edgeml.convert import ir_version_of, opsets_of

    p, model, choice = b.profile, b.model, need(b.threads, "threads")
    opsets, ir_version = opsets_of(model), ir_version_of(model)
    try:
        check_opsets(opsets, ir_version, p)
    except PackagingError as exc:
        quantized = b.quantization is not None and b.quantization.applied
        raise PackagingError(f"int8 model refused: {exc}" if quantized else str(exc)) from exc
    with tempfile.TemporaryDirectory(prefix="edgeml-fit-") as tmp:
        path = Path(tmp) / MODEL
        path.write_bytes(model)
        rows = derive_rows(b.derived, need(b.selftest, "selftest")["rows"])  # the ONNX inputs
        memory = check_memory(path, p, inputs=b.inputs, rows=rows,
                              what=need(b.entry, "entry").ref, intra_op=choice.intra_op)
    versions = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(opsets.items()))
    detail = f"{versions}, IR {ir_version} within {p.name}; memory within {p.memory_budget_mb} MiB"
    shown = (f"{versions}, IR {ir_version}; +{memory.added_mb:.1f} MiB, "
             f"{memory.total_mb:.0f} of {p.memory_budget_mb} MiB")
    return b.done("fit", detail, shown=shown, memory=memory)


def wheels(b: Build) -> Build:
    if not b.request.offline:
        return b.done("wheels", "no --offline", outcome="skipped")
    got = download_wheels(b.profile, created_at=b.meta["created_at"])
    return b.done("wheels", f"{len(got)} wheels for {b.profile.name}", members={**b.members, **got})


def _versions() -> dict[str, str]:
    out = {}
    for lib in _CONVERT_LIBS:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _provenance(b: Build) -> dict[str, Any]:
    meta, p = b.meta, b.profile
    data = meta.get("data") or {}
    model = meta.get("model") or {}
    return {
        "registry_ref": need(b.entry, "entry").ref,
        "recipe_sha256": meta.get("recipe_sha256"),
        "data_sha256": data.get("sha256"),
        "data_source": data.get("source"),
        "family": model.get("family"),
        "params": model.get("params"),
        "trained_with": meta.get("libraries") or {},
        "packaged_with": {"edgeml": __version__, **_versions()},
        "profile": {"name": p.name, "os": p.os, "python": p.python, "onnxruntime": p.onnxruntime},
    }


def manifest(b: Build) -> Build:
    from edgeml.convert import ir_version_of, min_onnxruntime, opsets_of

    entry, p, model = need(b.entry, "entry"), b.profile, b.model
    choice, outcome = need(b.threads, "threads"), need(b.quantization, "quantization")
    members = {**b.members, MODEL: model, SELFTEST: selftest_bytes(need(b.selftest, "selftest"))}
    m = Manifest(
        name=entry.name,
        version=entry.version,
        task=b.meta["task"],
        created_at=b.meta["created_at"],
        edgeml_version=__version__,
        # intra_op_threads is repeated here for runtimes that predate the runtime block
        target=TargetInfo(name=p.name, arch=p.arch, intra_op_threads=choice.intra_op,
                          inter_op_threads=choice.inter_op, memory_budget_mb=p.memory_budget_mb,
                          serve=p.serve.manifest_limits()),
        onnx=OnnxInfo(opset=opsets_of(model).get("", 0), ir_version=ir_version_of(model),
                      min_onnxruntime=min_onnxruntime(model), quantized=outcome.applied),
        inputs=list(b.inputs),
        derived=list(b.derived),
        outputs=need(b.exported, "exported").output_spec,
        files=file_hashes(members),
        metrics=entry.record.bundle_metrics(),
        parity=b.parity,
        reference_profile=b.meta.get("reference_profile") or {},
        provenance=_provenance(b),
        quantization=outcome.manifest_block(),
        install=install_notes(p, offline=b.request.offline),
        runtime=RuntimeInfo(intra_op_threads=choice.intra_op, inter_op_threads=choice.inter_op,
                            threads_chosen_by=choice.chosen_by),
        build={"stages": [r.to_manifest() for r in b.log]},
    )
    m.validate()
    return b.done("manifest", f"{len(b.log)} stages recorded", manifest=m,
                  members={**members, MANIFEST: m.to_json()})


def sign(b: Build) -> Build:
    from edgeml.package.keys import sign_manifest

    key = b.request.sign_key
    if key is None:
        return b.done("sign", "no --sign-key", outcome="skipped")
    signature = sign_manifest(b.members[MANIFEST], key) + b"\n"
    return b.done("sign", f"ed25519, {key.name}", members={**b.members, SIGNATURE: signature})


def write(b: Build) -> Build:
    m = need(b.manifest, "manifest")
    path = write_bundle(b.request.out_dir / m.filename, b.members, m.created_at)
    return b.done("write", m.filename, shown=f"{path} ({path.stat().st_size:,} bytes)", path=path)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Build], Build]
    title: Callable[[Request], str]  # what the progress display says while it runs


STAGES: tuple[Stage, ...] = (
    Stage("load", load, lambda r: f"load {r.ref}"),
    Stage("convert", convert, lambda r: f"convert to ONNX for {r.profile.name}"),
    Stage("parity", parity, lambda r: "parity gate on the holdout"),
    Stage("quantize", quantize, lambda r: f"quantization ({r.policy})"),
    Stage("selftest", selftest, lambda r: "self-test rows"),
    Stage("threads", threads, lambda r: f"intra-op threads, 1 or {r.profile.cores}"),
    Stage("fit", fit, lambda r: f"fit {r.profile.name}: opsets, IR, memory"),
    Stage("wheels", wheels, lambda r: f"wheels for {r.profile.name}"),
    Stage("manifest", manifest, lambda r: "manifest"),
    Stage("sign", sign, lambda r: "signature"),
    Stage("write", write, lambda r: "write the bundle"),
)


def run_stage(stage: Stage, b: Build) -> Build:
    """Run one stage and check it kept the contract: exactly one record, under its name."""
    out = stage.run(b)
    if len(out.log) != len(b.log) + 1 or out.log[-1].name != stage.name:
        raise PackagingError(f"internal: stage {stage.name} did not record its outcome")
    return out
