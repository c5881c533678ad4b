"""CLI commands of the package layer: ``devices``, ``package``, ``keys generate``.

Host commands: pydantic, yaml, rich and the converters are imported inside the command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeml.cli.base import (
    cli,
    json_option,
    print_json,
    registry_dir,
    registry_option,
    text_table,
)
from edgeml.package.policy import POLICIES

DEFAULT_OUT = "bundles"


def devices_option(func: Any) -> Any:
    return click.option(
        "--devices", "devices_dir", type=click.Path(file_okay=False), default=None,
        help="Folder of extra device profiles (default: $EDGEML_DEVICES); stock profiles stay available.",
    )(func)


@cli.command("devices")
@devices_option
@json_option
def devices_cmd(devices_dir: str | None, as_json: bool) -> None:
    """List the device profiles that `edgeml package --target` accepts.

    Add your own: copy devices/rpi4.yaml to a folder, edit it, point --devices or
    $EDGEML_DEVICES at the folder. Example: edgeml devices --json
    """
    from edgeml.package.profiles import list_profiles

    profiles = list_profiles(Path(devices_dir) if devices_dir else None)
    if as_json:
        print_json([p.to_dict() for p in profiles])
        return
    rows = [["name", "arch", "python", "onnxruntime", "opset/ml/IR", "RAM budget", "install"]]
    for p in profiles:
        rows.append([p.name, p.arch, p.python, p.onnxruntime,
                     f"{p.max_opset}/{p.max_ml_opset}/{p.max_ir_version}",
                     f"{p.memory_budget_mb} MiB", p.runtime.method])
    click.echo(text_table(rows))
    click.echo("")
    for p in profiles:
        click.echo(f"{p.name}: {p.description} [{p.path}]")


@cli.command("package")
@click.argument("ref")
@click.option("--target", "-t", required=True,
              help="Device profile name (see `edgeml devices`) or path to a profile .yaml.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=DEFAULT_OUT,
              show_default=True, help="Folder the bundle is written to.")
@registry_option
@click.option("--quantize", type=click.Choice(POLICIES), default=None,
              help="int8 quantization policy (default: the profile's, normally auto).")
@click.option("--offline", is_flag=True,
              help="Include the wheels the target needs to install the runtime without a network.")
@click.option("--sign-key", type=click.Path(dir_okay=False), default=None,
              help="ed25519 private key (from `edgeml keys generate`): adds manifest.sig.")
@devices_option
@json_option
def package_cmd(ref: str, target: str, out_dir: str, registry: str | None, quantize: str | None,
                offline: bool, sign_key: str | None, devices_dir: str | None, as_json: bool) -> None:
    """Package a registered model (NAME or NAME@VERSION) as a bundle for a device.

    Stages: load, convert (ONNX within the device's limits), parity, quantize (per policy),
    selftest, threads (1 or the device's cores, measured), fit (opsets, IR, memory), wheels
    (--offline), manifest, sign (--sign-key), write <name>-<version>-<target>.edgeml.
    Example: edgeml package iris --target rpi4
    """
    from edgeml.package.builder import package

    result = package(
        ref,
        target=target,
        registry=registry_dir(registry),
        out_dir=Path(out_dir),
        quantize=quantize,
        offline=offline,
        sign_key=Path(sign_key) if sign_key else None,
        devices_dir=Path(devices_dir) if devices_dir else None,
    )
    if as_json:
        print_json(result.to_dict())
        return
    m, mem, q, t = result.manifest, result.memory, result.quantization, result.threads
    click.echo(f"{result.path}  {result.size_bytes:,} bytes")
    click.echo(f"  {m.ref} for {m.target.name}: opset {m.onnx.opset}, IR {m.onnx.ir_version}, "
               f"onnxruntime >= {m.onnx.min_onnxruntime}{', int8' if m.onnx.quantized else ''}")
    click.echo(f"  memory: model adds {mem.added_mb:.1f} MiB, {mem.total_mb:.0f} of "
               f"{mem.budget_mb} MiB budget with the runtime")
    click.echo(f"  threads: intra-op {t.intra_op} ({t.chosen_by}: {t.reason})")
    if q.report:
        r = q.report
        click.echo(f"  quantization: {'int8 shipped' if q.applied else 'float shipped'}")
        click.echo(f"    size     {r['size_before']:>10,} -> {r['size_after']:>10,} bytes "
                   f"(x{r['size_ratio']:.2f})")
        click.echo(f"    {r['metric_name']:<8} {r['metric_before']:>10.4f} -> {r['metric_after']:>10.4f} "
                   f"({r['drop_points']:+.2f} points drop)")
        click.echo(f"    latency  {r['latency_ms_before']:>10.3f} -> {r['latency_ms_after']:>10.3f} ms "
                   f"(batch 1, median of {r['runs']})")
    else:
        click.echo(f"  quantization: none ({q.reason})")
    if result.wheels:
        click.echo(f"  wheels: {', '.join(result.wheels)}")
    click.echo(f"  signed: {'yes' if result.signed else 'no'}")


@cli.group("keys")
def keys_group() -> None:
    """Manage ed25519 keys that sign bundles (`package --sign-key`, `verify --public-key`)."""


@keys_group.command("generate")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="keys", show_default=True,
              help="Folder for the key files.")
@click.option("--name", default="edgeml", show_default=True, help="Base name: NAME.key and NAME.pub.")
def keys_generate_cmd(out_dir: str, name: str) -> None:
    """Create an ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub.

    Refuses to overwrite existing files. Example: edgeml keys generate --out keys
    """
    from edgeml.package.keys import generate_keypair

    private, public = generate_keypair(Path(out_dir), name)
    click.echo(f"private key: {private} (keep it on the build machine)")
    click.echo(f"public key:  {public} (copy it to devices: edgeml verify --public-key {public.name})")
