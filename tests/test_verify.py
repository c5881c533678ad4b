"""`edgeml verify`: a tampered, unsigned-when-required or wrongly signed bundle is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tiny_bundle

from edgeml.bundle.manifest import MANIFEST, MODEL, SELFTEST, SIGNATURE, Manifest
from edgeml.bundle.verify import verify_bundle
from edgeml.cli import main
from edgeml.errors import BundleError, NotFoundError, SignatureError
from edgeml.package.keys import generate_keypair


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("keys")
    return {"a": generate_keypair(root, "a"), "b": generate_keypair(root, "b")}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle.make(tmp_path)


@pytest.fixture
def signed(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> Path:
    return tiny_bundle.make(tmp_path, sign_key=keys["a"][0])


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def _replace(src: Path, member: str, data: bytes | None) -> Path:
    """Rewrite ``src`` in place with one member replaced (or removed when ``data`` is None)."""
    files = tiny_bundle.read_members(src)
    if data is None:
        files.pop(member)
    else:
        files[member] = data
    return tiny_bundle.write(src, files)


def test_good_bundle_passes_every_check(bundle: Path) -> None:
    report = verify_bundle(bundle)
    assert report.ok
    assert {c.name: c.status for c in report.checks} == {
        "manifest": "ok", "files": "ok", "signature": "unsigned", "model": "ok", "io": "ok",
        "selftest": "ok",
    }


def test_signed_bundle_with_and_without_key(signed: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    assert verify_bundle(signed, public_key=keys["a"][1]).status("signature") == "ok"
    assert verify_bundle(signed).status("signature") == "signed, not checked"


def test_flipped_byte_in_model_is_named(bundle: Path) -> None:
    data = bytearray(tiny_bundle.read_members(bundle)[MODEL])
    data[len(data) // 2] ^= 0x01
    _replace(bundle, MODEL, bytes(data))
    with pytest.raises(BundleError, match=r"files check failed: model\.onnx: sha256 mismatch"):
        verify_bundle(bundle)


def test_flipped_byte_in_the_archive_is_named(tmp_path: Path) -> None:
    path = tiny_bundle.make(tmp_path)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(MODEL)
    raw = bytearray(path.read_bytes())
    # local header: 30 bytes + name + extra, then the compressed data
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"files check failed: model\.onnx: "):
        verify_bundle(path)


def test_edited_manifest_breaks_the_signature(signed: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    files = tiny_bundle.read_members(signed)
    raw = json.loads(files[MANIFEST])
    raw["metrics"] = {"primary": "accuracy", "holdout": {"accuracy": 0.999}}
    files[MANIFEST] = Manifest.from_dict(raw).to_json()
    tiny_bundle.write(signed, files)  # keeps the old manifest.sig
    with pytest.raises(SignatureError, match=r"signature check failed: .*does not match manifest\.json"):
        verify_bundle(signed, public_key=keys["a"][1])


def test_edited_manifest_hash_is_caught_without_a_key(bundle: Path) -> None:
    files = tiny_bundle.read_members(bundle)
    raw = json.loads(files[MANIFEST])
    raw["files"][SELFTEST] = "0" * 64
    files[MANIFEST] = Manifest.from_dict(raw).to_json()
    tiny_bundle.write(bundle, files)
    with pytest.raises(BundleError, match=r"files check failed: selftest\.json: sha256 mismatch"):
        verify_bundle(bundle)


def test_manifest_input_that_the_model_lacks(bundle: Path) -> None:
    files = tiny_bundle.read_members(bundle)
    raw = json.loads(files[MANIFEST])
    raw["inputs"][1]["name"] = "humidity"
    files[MANIFEST] = Manifest.from_dict(raw).to_json()
    tiny_bundle.write(bundle, files)
    with pytest.raises(BundleError, match=r"io check failed: input 'humidity' is in the manifest"):
        verify_bundle(bundle)


def test_wrong_signature(signed: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    with pytest.raises(SignatureError, match=r"signature check failed: .*public key b\.pub"):
        verify_bundle(signed, public_key=keys["b"][1])


def test_missing_signature_when_a_key_is_required(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    with pytest.raises(SignatureError, match=r"signature check failed: bundle is not signed"):
        verify_bundle(bundle, public_key=keys["a"][1])


def test_malformed_signature(signed: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    _replace(signed, SIGNATURE, b"not base64 at all!\n")
    with pytest.raises(SignatureError, match=r"manifest\.sig: not valid base64"):
        verify_bundle(signed, public_key=keys["a"][1])


def test_extra_unlisted_member(bundle: Path) -> None:
    _replace(bundle, "wheels/evil-1.0-py3-none-any.whl", b"PK not really")
    with pytest.raises(BundleError, match=r"files check failed: wheels/evil-1\.0-py3-none-any\.whl: not listed"):
        verify_bundle(bundle)


def test_listed_member_missing(bundle: Path) -> None:
    _replace(bundle, SELFTEST, None)
    with pytest.raises(BundleError, match=r"selftest\.json: listed in manifest files but missing"):
        verify_bundle(bundle)


def test_selftest_that_the_model_does_not_reproduce(tmp_path: Path) -> None:
    manifest, files = tiny_bundle.members()
    data = json.loads(files[SELFTEST])
    data["expected"]["probabilities"][2][0] += 0.01
    files[SELFTEST] = json.dumps(data).encode()
    raw = manifest.to_dict()
    raw["files"] = tiny_bundle.file_hashes(files)
    files[MANIFEST] = Manifest.from_dict(raw).to_json()
    path = tiny_bundle.write(tmp_path / "b.edgeml", files)
    with pytest.raises(BundleError, match=r"selftest check failed: output 'probabilities' row 2"):
        verify_bundle(path)
    report = verify_bundle(path, run_selftest=False)
    assert report.ok and report.status("selftest") == "skipped"


def test_not_a_bundle(tmp_path: Path) -> None:
    junk = tmp_path / "junk.edgeml"
    junk.write_bytes(b"hello")
    with pytest.raises(BundleError, match=r"manifest check failed: junk\.edgeml: not an edgeml bundle"):
        verify_bundle(junk)
    with pytest.raises(NotFoundError):
        verify_bundle(tmp_path / "absent.edgeml")


def test_report_without_raising(bundle: Path) -> None:
    _replace(bundle, "extra.txt", b"x")
    report = verify_bundle(bundle, raise_on_failure=False)
    d = report.to_dict()
    assert not d["ok"]
    status = {c["name"]: c["status"] for c in d["checks"]}
    assert status["files"] == "failed"
    assert status["model"] == "skipped"


def test_cli_verify_ok_and_json(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = _cli(["verify", str(bundle)], capsys)
    assert code == 0 and out.rstrip().endswith("OK")
    code, out, _err = _cli(["verify", str(bundle), "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True


def test_cli_verify_failure_exit_code(signed: Path, keys: dict[str, tuple[Path, Path]],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = _cli(["verify", str(signed), "--public-key", str(keys["b"][1])], capsys)
    assert code == 1
    assert err.startswith("error: ") and "signature check failed" in err


def test_python_m_edgeml_verify_exits_1(bundle: Path) -> None:
    _replace(bundle, "extra.txt", b"x")
    proc = subprocess.run([sys.executable, "-m", "edgeml", "verify", str(bundle)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "error: tiny-1-x86_64.edgeml: files check failed: extra.txt: not listed" in proc.stderr


def test_cli_inspect(signed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = _cli(["inspect", str(signed)], capsys)
    assert code == 0
    assert out.startswith("tiny@1  classification  for x86_64")
    assert "signed:   yes" in out and "mode  categorical  string" in out
    code, out, _err = _cli(["inspect", str(signed), "--json"], capsys)
    data = json.loads(out)
    assert data["signed"] is True
    assert [i["name"] for i in data["inputs"]] == ["temp", "load", "mode"]
    assert data["sizes"]["model_bytes"] == len(tiny_bundle.model_bytes())
