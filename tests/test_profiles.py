"""Device profiles: the stock ones load, a bad user profile names file and field, `edgeml devices`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgeml.cli import main
from edgeml.errors import NotFoundError, ProfileError
from edgeml.package.profiles import (
    CHECKOUT_DIR,
    PACKAGED_DIR,
    list_profiles,
    load_profile,
    parse_profile,
)

STOCK = {"x86_64", "rpi4", "rpi5", "rpi-zero2", "rpi-armv7"}


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def _stock_raw(name: str = "rpi4") -> dict[str, object]:
    return dict(yaml.safe_load((CHECKOUT_DIR / f"{name}.yaml").read_text()))


def test_stock_profiles_load() -> None:
    profiles = {p.name: p for p in list_profiles()}
    assert set(profiles) >= STOCK
    rpi4 = profiles["rpi4"]
    assert rpi4.arch == "aarch64" and rpi4.python == "3.11" and rpi4.runtime.method == "pypi"
    # with manylinux_2_17 alone, pip silently falls back to onnxruntime 1.16.3
    assert rpi4.runtime.platform_tags[:2] == ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64")
    armv7 = profiles["rpi-armv7"]
    assert armv7.arch == "armv7l" and armv7.runtime.method == "distro"
    assert "python3-onnxruntime" in armv7.runtime.distro_packages
    assert (armv7.onnxruntime, armv7.max_opset, armv7.max_ml_opset, armv7.max_ir_version) == ("1.21.0", 22, 4, 10)
    assert profiles["rpi-zero2"].memory_budget_mb < profiles["rpi4"].memory_budget_mb
    for p in profiles.values():
        assert p.model_budget_mb > 0
        assert p.quantization.policy == "auto" and p.quantization.max_metric_drop == 1.0
        # threads are chosen per model when packaging: 1, or the cores where measured faster
        assert p.cores == 4 and p.threads.intra_op == "auto" and p.threads.typical_batch == 1


def test_packaged_copies_match_the_checkout() -> None:
    """pip-installed edgeml reads edgeml/package/devices: it must not drift from devices/."""
    repo = {p.name: p.read_text() for p in CHECKOUT_DIR.glob("*.yaml")}
    packaged = {p.name: p.read_text() for p in PACKAGED_DIR.glob("*.yaml")}
    assert repo == packaged


def test_load_by_name_and_by_path(tmp_path: Path) -> None:
    assert load_profile("rpi5").name == "rpi5"
    raw = _stock_raw()
    raw["name"] = "bench-board"
    path = tmp_path / "anything.yaml"
    path.write_text(yaml.safe_dump(raw))
    profile = load_profile(path)
    assert profile.name == "bench-board" and profile.path == path


def test_unknown_target_lists_the_known() -> None:
    with pytest.raises(NotFoundError, match=r"unknown target 'rpi9' \(known: .*rpi-armv7.*x86_64"):
        load_profile("rpi9")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_opset": "lots"}, r"bad\.yaml: max_opset: Input should be a valid integer"),
        ({"arch": "riscv64"}, r"bad\.yaml: arch: Input should be 'x86_64', 'aarch64' or 'armv7l'"),
        ({"threads": {"intra": 2}}, r"bad\.yaml: threads\.intra: unknown field"),
        ({"python": 3.1}, r"bad\.yaml: python: Input should be a valid string"),
        ({"runtime": {"method": "pypi"}}, r"bad\.yaml: runtime: .*method pypi needs platform_tags"),
        ({"max_opset": 30}, r"bad\.yaml: max_opset: 30 is more than onnxruntime 1\.32\.0 implements \(28\)"),
        ({"memory_budget_mb": 64}, r"bad\.yaml: memory_budget_mb: 64 leaves no room"),
        ({"quantization": {"policy": "fp16"}}, r"bad\.yaml: quantization\.policy: Input should be"),
        ({"quantization": {"policy": "always"}},
         r"bad\.yaml: quantization\.policy: Input should be 'auto', 'int8' or 'none'"),
        ({"threads": {"intra_op": "many"}},
         r"bad\.yaml: threads\.intra_op: 'many' is not auto or a number of threads from 0 to 256"),
        ({"threads": {"intra_op": 300}}, r"bad\.yaml: threads\.intra_op: 300 is not auto"),
        ({"cores": 0}, r"bad\.yaml: cores: Input should be greater than or equal to 1"),
    ],
)
def test_bad_profile_names_file_and_field(tmp_path: Path, change: dict[str, object], message: str) -> None:
    raw = {**_stock_raw(), "name": "bad", **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ProfileError, match=message):
        load_profile(path)


def test_fixed_threads_and_older_profiles_still_load(tmp_path: Path) -> None:
    """A profile from before `cores` and `intra_op: auto` (threads: {intra_op: 4}) still loads:
    its number is used as given, on a device assumed to have one core."""
    raw = {**_stock_raw(), "name": "older", "threads": {"intra_op": 4, "inter_op": 1}}
    del raw["cores"]
    profile = parse_profile(raw, tmp_path / "older.yaml")
    assert (profile.cores, profile.threads.intra_op, profile.threads.typical_batch) == (1, 4, 1)


def test_name_must_match_the_file_in_a_devices_folder(tmp_path: Path) -> None:
    raw = {**_stock_raw(), "name": "other"}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ProfileError, match=r"mine\.yaml: name: 'other' must match the file name 'mine'"):
        list_profiles(tmp_path)


def test_not_yaml_mapping() -> None:
    with pytest.raises(ProfileError, match=r"x\.yaml: a device profile must be a YAML mapping"):
        parse_profile(["a"], "x.yaml")


def test_user_folder_adds_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = {**_stock_raw(), "name": "my-board", "memory_budget_mb": 300}
    (tmp_path / "my-board.yaml").write_text(yaml.safe_dump(mine))
    override = {**_stock_raw(), "name": "rpi4", "memory_budget_mb": 512}
    (tmp_path / "rpi4.yaml").write_text(yaml.safe_dump(override))
    names = {p.name: p for p in list_profiles(tmp_path)}
    assert set(names) == STOCK | {"my-board"}
    assert names["rpi4"].memory_budget_mb == 512
    monkeypatch.setenv("EDGEML_DEVICES", str(tmp_path))
    assert load_profile("my-board").memory_budget_mb == 300
    monkeypatch.setenv("EDGEML_DEVICES", str(tmp_path / "absent"))
    with pytest.raises(NotFoundError, match="devices folder not found"):
        list_profiles()


def test_cli_devices(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = _cli(["devices"], capsys)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["name", "arch", "python", "onnxruntime"]
    armv7 = next(r for r in rows if r.startswith("rpi-armv7 "))
    assert armv7.split()[:5] == ["rpi-armv7", "armv7l", "3.13", "1.21.0", "22/4/10"]
    code, out, _err = _cli(["devices", "--json"], capsys)
    data = {p["name"]: p for p in json.loads(out)}
    assert set(data) == STOCK
    assert data["rpi4"]["runtime"]["platform_tags"][0] == "manylinux_2_28_aarch64"


def test_cli_devices_bad_user_profile_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = {**_stock_raw(), "name": "broken", "max_ir_version": 2}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(raw))
    code, _out, err = _cli(["devices", "--devices", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("error: ") and "broken.yaml: max_ir_version: " in err
