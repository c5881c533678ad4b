"""Verifying a bundle before it is trusted (device-safe: stdlib, numpy, onnxruntime).

Checks, in order; each one's status is ``ok``, ``failed`` or ``skipped`` (the signature check
also reports ``unsigned`` or ``signed, not checked`` when no public key is given)::

    manifest    manifest.json parses and is valid
    files       every member but manifest.json/manifest.sig is listed in manifest.files with a
                matching sha256; nothing listed is missing; no unlisted or duplicate members
    signature   with a public key: manifest.sig is present and signs manifest.json
    model       model.onnx loads in onnxruntime
    io          the ONNX inputs are exactly the manifest's inputs (names and element types), and
                the outputs the manifest names exist
    selftest    selftest.json's rows, fed through edgeml.bundle.feeds.to_feeds, reproduce the
                expected outputs (floats within atol, labels exactly)

A failed check raises :class:`BundleError` (:class:`SignatureError` for the signature) whose
message says which check failed and on what, unless ``raise_on_failure=False``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.bundle.feeds import rows_to_columns, to_feeds
from edgeml.bundle.manifest import MANIFEST, MODEL, SELFTEST, SIGNATURE, Manifest
from edgeml.bundle.reader import Bundle, open_bundle
from edgeml.bundle.session import bundle_session
from edgeml.bundle.signature import check_signature
from edgeml.errors import BundleError, EdgeMLError, InputError, SignatureError

__all__ = ["Check", "VerifyReport", "verify_bundle"]

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
UNSIGNED, NOT_CHECKED = "unsigned", "signed, not checked"
CHECKS = ("manifest", "files", "signature", "model", "io", "selftest")

_ORT_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int64": "tensor(int64)",
              "string": "tensor(string)"}


@dataclass
class Check:
    name: str
    status: str
    detail: str = ""
    error: EdgeMLError | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class VerifyReport:
    path: Path
    checks: list[Check] = field(default_factory=list)
    manifest: Manifest | None = None

    @property
    def ok(self) -> bool:
        return all(c.status != FAILED for c in self.checks)

    @property
    def failed(self) -> Check | None:
        return next((c for c in self.checks if c.status == FAILED), None)

    def status(self, name: str) -> str | None:
        return next((c.status for c in self.checks if c.name == name), None)

    def raise_for_failure(self) -> None:
        bad = self.failed
        if bad is None:
            return
        if isinstance(bad.error, SignatureError):
            raise SignatureError(f"{self.path.name}: {bad.name} check failed: {bad.detail}")
        raise BundleError(f"{self.path.name}: {bad.name} check failed: {bad.detail}")

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "path": str(self.path),
            "ok": self.ok,
            "bundle": {"name": m.name, "version": m.version, "target": m.target.name} if m else None,
            "checks": [c.to_dict() for c in self.checks],
        }


def _files(bundle: Bundle) -> str:
    listed = dict(bundle.manifest.files)
    try:
        with zipfile.ZipFile(bundle.path) as zf:
            names = zf.namelist()
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise BundleError(f"{dupes[0]}: appears twice in the archive")
            for name in names:
                if name in (MANIFEST, SIGNATURE) or name.endswith("/"):
                    continue
                if name not in listed:
                    raise BundleError(f"{name}: not listed in manifest files (unexpected member)")
                digest = hashlib.sha256()
                try:
                    with zf.open(name) as fh:
                        for chunk in iter(lambda: fh.read(1 << 20), b""):
                            digest.update(chunk)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                    raise BundleError(f"{name}: corrupt in the archive ({exc})") from exc
                want = listed.pop(name)
                if digest.hexdigest() != want:
                    raise BundleError(
                        f"{name}: sha256 mismatch (manifest {str(want)[:12]}…, "
                        f"member {digest.hexdigest()[:12]}…)"
                    )
    except zipfile.BadZipFile as exc:
        raise BundleError(f"not a valid zip archive: {exc}") from exc
    if listed:
        raise BundleError(f"{sorted(listed)[0]}: listed in manifest files but missing from the bundle")
    return f"{len(bundle.manifest.files)} members match their sha256"


def _session(bundle: Bundle) -> Any:
    return bundle_session(bundle.read(MODEL))


def _io(manifest: Manifest, session: Any) -> str:
    have = {i.name: i.type for i in session.get_inputs()}
    want = {spec.name: spec.dtype for spec in manifest.inputs}
    missing = [n for n in want if n not in have]
    if missing:
        raise BundleError(f"input {missing[0]!r} is in the manifest but not in {MODEL}")
    extra = [n for n in have if n not in want]
    if extra:
        raise BundleError(f"{MODEL} has input {extra[0]!r} that the manifest does not list")
    for name, dtype in want.items():
        if _ORT_TYPES.get(dtype) != have[name]:
            raise BundleError(f"input {name!r}: manifest says {dtype}, {MODEL} takes {have[name]}")
    outputs = {o.name for o in session.get_outputs()}
    out = manifest.outputs
    for role in ("label", "probabilities", "prediction", "score"):
        name = getattr(out, role)
        if name is not None and name not in outputs:
            raise BundleError(f"outputs.{role}: {name!r} is not an output of {MODEL}")
    return f"{len(want)} inputs and outputs {', '.join(sorted(outputs))} match the manifest"


def _compare(name: str, actual: np.ndarray, expected: Any, atol: float) -> None:
    exp = np.asarray(expected)
    if exp.size != actual.size:
        raise BundleError(f"output {name!r}: {actual.size} values, expected {exp.size}")
    act = actual.reshape(exp.shape) if exp.shape else actual.reshape(-1)
    if act.dtype.kind in "fc":
        expf = np.asarray(expected, dtype=np.float64).reshape(act.shape)
        diff = np.abs(act.astype(np.float64) - expf)
        both_nan = np.isnan(act) & np.isnan(expf)
        bad = ~both_nan & ~(diff <= atol)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            worst = float(np.nanmax(np.where(both_nan, 0.0, diff)))
            raise BundleError(
                f"output {name!r} row {row}: differs from the expected value by up to "
                f"{worst:.3g} (atol {atol:g})"
            )
        return
    act_list, exp_list = act.reshape(len(act), -1).tolist(), exp.reshape(len(act), -1).tolist()
    for row, (a, e) in enumerate(zip(act_list, exp_list, strict=True)):
        if [str(v) for v in a] != [str(v) for v in e]:
            raise BundleError(f"output {name!r} row {row}: got {a[0]!r}, expected {e[0]!r}")


def _selftest(bundle: Bundle, session: Any) -> str:
    try:
        data = json.loads(bundle.read(SELFTEST))
        rows, expected = data["rows"], data.get("expected", {})
        atol = float(data.get("atol", 1e-4))
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{SELFTEST}: malformed ({exc})") from exc
    if not isinstance(expected, dict):
        raise BundleError(f"{SELFTEST}: expected: must map output names to values")
    try:
        feeds = to_feeds(bundle.manifest.inputs, rows_to_columns(rows), bundle.manifest.derived)
    except (InputError, BundleError) as exc:
        raise BundleError(f"{SELFTEST}: {exc}") from exc
    names = list(expected)
    if not names:  # hand-made bundles: the rows must still feed and run
        session.run(None, feeds)
        return f"{len(rows)} rows run (no expected outputs to compare)"
    outputs = {o.name for o in session.get_outputs()}
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise BundleError(f"{SELFTEST}: expected output {unknown[0]!r} is not an output of {MODEL}")
    try:
        results = session.run(names, feeds)
    except Exception as exc:
        raise BundleError(f"running {MODEL} on the self-test rows failed: {exc}") from exc
    for name, actual in zip(names, results, strict=True):
        _compare(name, np.asarray(actual), expected[name], atol)
    return f"{len(rows)} rows reproduce {', '.join(names)} (atol {atol:g})"


def _signature(bundle: Bundle, public_key: Path) -> str:
    check_signature(bundle.manifest_bytes, bundle.signature(), public_key)
    return f"valid for {public_key.name}"


def verify_bundle(
    path: Path | str,
    *,
    public_key: Path | str | None = None,
    run_selftest: bool = True,
    raise_on_failure: bool = True,
) -> VerifyReport:
    """Run every check on the bundle at ``path``; see the module docstring.

    A missing bundle or public-key file raises NotFoundError whatever ``raise_on_failure`` is.
    """
    report = VerifyReport(path=Path(path))

    def run(name: str, fn: Any, skip: str | None = None) -> Any:
        if skip:
            report.checks.append(Check(name, SKIPPED, skip))
            return None
        try:
            out = fn()
        except BundleError as exc:
            report.checks.append(Check(name, FAILED, str(exc), exc))
            return None
        detail = out if isinstance(out, str) else ""
        if name == "model":
            import onnxruntime

            detail = f"loads in onnxruntime {onnxruntime.__version__}"
        report.checks.append(Check(name, OK, detail))
        return out if out is not None else True

    bundle: Bundle | None = run("manifest", lambda: open_bundle(path))
    if bundle is None:
        for name in CHECKS[1:]:
            report.checks.append(Check(name, SKIPPED, "manifest check failed"))
    else:
        report.manifest = bundle.manifest
        report.checks[0].detail = f"{bundle.manifest.ref} for {bundle.manifest.target.name}"
        files_ok = run("files", lambda: _files(bundle))
        if public_key is not None:
            key = Path(public_key)
            run("signature", lambda: _signature(bundle, key))
        else:
            status = NOT_CHECKED if bundle.has(SIGNATURE) else UNSIGNED
            report.checks.append(Check("signature", status, "no public key given"))
        why = None if files_ok else "files check failed"
        session = run("model", lambda: _session(bundle), why)
        why = why or (None if session is not None else "model check failed")
        io_ok = run("io", lambda: _io(bundle.manifest, session), why)
        why = why or (None if io_ok else "io check failed")
        why = why or (None if run_selftest else "not requested")
        run("selftest", lambda: _selftest(bundle, session), why)
    if raise_on_failure:
        report.raise_for_failure()
    return report
