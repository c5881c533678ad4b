"""Emulated Raspberry Pi userlands for tests: Debian trees run with qemu-user, cached on disk.

Two userlands, one per kind of Pi that edgeml targets:

- ``aarch64``: Debian bookworm arm64 (Python 3.11, as Raspberry Pi OS 64-bit), with onnxruntime,
  numpy, paho-mqtt and click from PyPI's aarch64 wheels unpacked into ``site/``.
- ``armv7l``: Debian trixie armhf (Python 3.13), with Debian's own ``python3-onnxruntime`` (1.21),
  ``python3-numpy``, ``python3-click`` and ``python3-paho-mqtt``: PyPI has no armv7 onnxruntime.

A userland is built once (``mmdebstrap --variant=extract``: unpacked, no maintainer scripts run,
so no emulation is needed to build it) and then run as ``qemu-<arch>-static -L ROOT
ROOT/usr/bin/python3``, with the repository root on ``PYTHONPATH`` so the guest imports the
working tree's ``edgeml``. qemu's ``-L`` looks up every absolute path under ROOT first and falls
back to the host's, so the guest reads and writes host paths (tmp dirs, the repo) directly.

Cache: ``$EDGEML_ARM_CACHE``, else ``<repo>/build/arm``. Each userland lives in
``<cache>/<arch>-<suite>-<hash of its recipe>/`` (``rootfs/``, ``site/``, ``manifest.json``,
``build.log``). It is built in a temporary folder under an exclusive lock and renamed into place,
so a present folder is always complete; a warm start only stats it.

Command line (for people): ``python tests/arm/userland.py build [ARCH...]``,
``python tests/arm/userland.py run ARCH -- -c 'import platform; print(platform.machine())'``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ARCHES",
    "REPO",
    "Spec",
    "Userland",
    "UserlandBuildError",
    "UserlandUnavailable",
    "cache_dir",
    "debian_mirror",
    "ensure_userland",
    "strip_noise",
]

REPO = Path(__file__).resolve().parents[2]
RECIPE_VERSION = 1  # bump when the build steps change: old cache entries are then ignored
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_PACKAGES = ("qemu-user-static", "mmdebstrap")

_PI4_CORE_V8 = (
    "BogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n"
)
_PI4_CORE_V7 = (
    "model name\t: ARMv7 Processor rev 3 (v7l)\nBogoMIPS\t: 108.00\n"
    "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae "
    "evtstrm crc32\nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\n"
    "CPU part\t: 0xd08\nCPU revision\t: 3\n"
)
_PI4_BOARD = (
    "Hardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000e5e1c0de\n"
    "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
)


def _cpuinfo(core: str) -> str:
    return "".join(f"processor\t: {i}\n{core}\n" for i in range(4)) + _PI4_BOARD


@dataclass(frozen=True)
class Spec:
    """How to build one userland. Every field is part of the cache key."""

    arch: str  # what the guest's platform.machine() says
    debian_arch: str
    suite: str
    qemu: str
    include: tuple[str, ...]  # Debian packages (their dependencies come along)
    wheels: tuple[str, ...] = ()  # pip requirements, downloaded as wheels for `platforms`
    platforms: tuple[str, ...] = ()
    python_version: str = ""  # of the guest, for pip download
    cpuinfo: str = ""  # written to rootfs/proc/cpuinfo (qemu -L serves it to the guest)
    lib_alternatives: tuple[str, ...] = ()  # blas, lapack: links update-alternatives would make

    def key(self) -> str:
        blob = json.dumps([RECIPE_VERSION, self.__dict__], sort_keys=True, default=list)
        return f"{self.arch}-{self.suite}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


# The wheels tested on aarch64. Pinned so that a cache entry means one thing; override with
# EDGEML_ARM_AARCH64_REQUIREMENTS="onnxruntime==1.16.3 numpy<2 ..." (space-separated).
AARCH64_REQUIREMENTS = ("onnxruntime==1.32.0", "numpy==2.4.6", "paho-mqtt==2.2.0", "click==8.5.1")

ARCHES: dict[str, Spec] = {
    "aarch64": Spec(
        arch="aarch64",
        debian_arch="arm64",
        suite="bookworm",
        qemu="qemu-aarch64-static",
        include=("python3", "libstdc++6", "libgcc-s1"),
        wheels=tuple(os.environ.get("EDGEML_ARM_AARCH64_REQUIREMENTS", "").split())
        or AARCH64_REQUIREMENTS,
        # manylinux_2_28 must be listed: with 2_17 alone pip quietly picks onnxruntime 1.16.3.
        platforms=("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"),
        python_version="3.11",
        cpuinfo=_cpuinfo(_PI4_CORE_V8),
    ),
    "armv7l": Spec(
        arch="armv7l",
        debian_arch="armhf",
        suite="trixie",
        qemu="qemu-arm-static",
        include=(
            "python3",
            "python3-onnxruntime",
            "python3-numpy",
            "python3-click",
            "python3-paho-mqtt",
        ),
        cpuinfo=_cpuinfo(_PI4_CORE_V7),
        lib_alternatives=("blas", "lapack"),
    ),
}
ALIASES = {"arm64": "aarch64", "armhf": "armv7l", "armv7": "armv7l", "arm": "armv7l"}

# onnxruntime 1.21 as built by Debian prints ~570 of these on stderr per session: harmless.
_NOISE = re.compile(r"^Schema error: Trying to register schema with name .*$")


class UserlandUnavailable(RuntimeError):
    """The host cannot build userlands (tools missing, not root): tests should skip."""


class UserlandBuildError(RuntimeError):
    """Building a userland failed; the message ends with the log's tail."""


def cache_dir(cache: Path | None = None) -> Path:
    """``cache``, else ``$EDGEML_ARM_CACHE``, else ``<repo>/build/arm``."""
    return Path(cache or os.environ.get("EDGEML_ARM_CACHE") or REPO / "build" / "arm")


def strip_noise(text: str) -> str:
    """Drop onnxruntime's "Schema error" lines (and the blank line after each) from stderr."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if _NOISE.match(line):
            skipping = True
            continue
        if skipping and not line.strip():
            continue
        skipping = False
        out.append(line)
    return "".join(out)


@dataclass
class Userland:
    """A built userland, ready to run the guest's python3 under qemu."""

    arch: str
    root: Path  # the Debian tree (qemu -L)
    qemu: str  # absolute path of qemu-<arch>-static
    pythonpath: list[Path]  # unpacked wheels (if any), then the repository root
    info: dict[str, Any] = field(default_factory=dict)  # manifest.json: versions, timings

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / "python3"

    def command(self, args: Sequence[str]) -> list[str]:
        """The host argv that runs ``python3 ARGS`` in the guest (for Popen and friends)."""
        return [self.qemu, "-L", str(self.root), str(self.python), *map(str, args)]

    def environ(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """A clean guest environment (host PYTHON* variables are not passed), plus ``env``."""
        base = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
            "PYTHONPATH": os.pathsep.join(str(p) for p in self.pythonpath),
            "PYTHONDONTWRITEBYTECODE": "1",  # the cache stays as built (it is precompiled)
            "PYTHONNOUSERSITE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        return {**base, **(env or {})}

    def run_python(
        self,
        args: Sequence[str],
        *,
        cwd: str | Path | None = None,
        timeout: float = 600,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        keep_noise: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run the guest's ``python3 ARGS``; stdout and stderr as text, never raises on exit code.

        ``stderr`` has onnxruntime's harmless "Schema error" lines removed unless ``keep_noise``.
        """
        proc = subprocess.run(
            self.command(args),
            cwd=cwd,
            env=self.environ(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if not keep_noise:
            proc.stderr = strip_noise(proc.stderr)
        return proc


# -- building ------------------------------------------------------------------------------


def ensure_userland(
    arch: str, cache: Path | None = None, *, log: Callable[[str], None] | None = None
) -> Userland:
    """The userland for ``arch`` (aarch64 | armv7l), built first if the cache lacks it.

    Raises UserlandUnavailable when the tools are missing and cannot be installed (not root),
    UserlandBuildError when a build step fails.
    """
    spec = ARCHES[ALIASES.get(arch, arch)]
    say = log or _stderr
    qemu = _ensure_tools(spec, say)
    base = cache_dir(cache)
    entry = base / spec.key()
    if not (entry / "manifest.json").is_file():
        base.mkdir(parents=True, exist_ok=True)
        with _locked(base / f".{spec.key()}.lock"):
            if not (entry / "manifest.json").is_file():  # somebody else may have built it
                _build(spec, entry, qemu, say)
    info = json.loads((entry / "manifest.json").read_text())
    site = [entry / "site"] if spec.wheels else []
    return Userland(spec.arch, entry / "rootfs", qemu, [*site, REPO], info)


def _stderr(msg: str) -> None:
    print(f"[arm] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ensure_tools(spec: Spec, say: Callable[[str], None]) -> str:
    if not (shutil.which(spec.qemu) and shutil.which("mmdebstrap")):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise UserlandUnavailable(
                f"{spec.qemu} or mmdebstrap is missing and this is not root with apt-get: "
                f"run `sudo apt-get install -y {' '.join(APT_PACKAGES)}`"
            )
        say(f"installing {' '.join(APT_PACKAGES)} with apt-get")
        install = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for attempt in range(2):
            if attempt:  # stale or missing package lists: update once and retry
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            ok = subprocess.run([*install, *APT_PACKAGES], env=env, capture_output=True, text=True)
            if ok.returncode == 0:
                break
        else:
            raise UserlandUnavailable(
                f"apt-get install {' '.join(APT_PACKAGES)} failed:\n{_tail(ok.stderr)}"
            )
    qemu = shutil.which(spec.qemu)
    if not qemu or not shutil.which("mmdebstrap"):
        raise UserlandUnavailable(f"{spec.qemu} or mmdebstrap still missing after apt-get")
    return qemu


def debian_mirror() -> str:
    """``$EDGEML_ARM_MIRROR``, else the first Debian archive apt is configured with."""
    if os.environ.get("EDGEML_ARM_MIRROR"):
        return os.environ["EDGEML_ARM_MIRROR"]
    apt = Path("/etc/apt")
    files = [
        apt / "sources.list",
        *sorted((apt / "sources.list.d").glob("*.sources")),
        *sorted((apt / "sources.list.d").glob("*.list")),
    ]
    for path in files:
        with contextlib.suppress(OSError):
            text = path.read_text()
            found = re.findall(r"^\s*URIs:\s*(\S+)", text, re.M) + re.findall(
                r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M
            )
            for uri in found:
                if uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


def _build(spec: Spec, entry: Path, qemu: str, say: Callable[[str], None]) -> None:
    """Build ``entry`` in a temporary sibling folder and rename it into place (lock held)."""
    tmp = entry.parent / f".build-{entry.name}-{os.getpid()}"
    for stale in entry.parent.glob(f".build-{entry.name}-*"):  # we hold the lock: all are dead
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    log = tmp / "build.log"
    timings: dict[str, float] = {}
    started = time.monotonic()

    def step(name: str, *argvs: Sequence[str], **kw: Any) -> list[int]:
        """Run ``argvs`` side by side, output to the build log; their exit codes."""
        say(f"{spec.arch}: {name}")
        t0 = time.monotonic()
        with open(log, "a") as fh:
            fh.write("".join(f"$ {' '.join(argv)}\n" for argv in argvs))
            fh.flush()
            procs = [subprocess.Popen(a, stdout=fh, stderr=subprocess.STDOUT, **kw) for a in argvs]
            codes = [proc.wait() for proc in procs]
        timings[name] = round(time.monotonic() - t0, 1)
        return codes

    def fail(what: str) -> UserlandBuildError:
        return UserlandBuildError(
            f"{spec.arch}: {what}; {log}:\n" + _tail(log.read_text(errors="replace"))
        )

    try:
        root, site = tmp / "rootfs", tmp / "site"
        mirror = debian_mirror()
        mmdebstrap = [f"--arch={spec.debian_arch}", "--variant=extract"]
        mmdebstrap += [f"--include={','.join(spec.include)}", spec.suite, str(root), mirror]
        if step("mmdebstrap", ["mmdebstrap", *mmdebstrap]) != [0]:
            raise fail("mmdebstrap failed")
        _fix_tree(spec, root)
        guest = Userland(spec.arch, root, qemu, [site] if spec.wheels else [])
        if spec.wheels:
            pip = [_pip_python(), "-m", "pip", "download", "--disable-pip-version-check"]
            pip += ["--only-binary=:all:", "--implementation=cp", "-d", str(tmp / "wheels")]
            pip += [f"--python-version={spec.python_version}"]
            pip += [f"--platform={p}" for p in spec.platforms]
            if step("pip download", [*pip, *spec.wheels]) != [0]:
                raise fail("pip download failed")
            for whl in sorted((tmp / "wheels").glob("*.whl")):
                with zipfile.ZipFile(whl) as zf:
                    zf.extractall(site)
            shutil.rmtree(tmp / "wheels")
        # No .pyc in the tree (Debian compiles in postinst): compile once, in the guest. Not
        # `compileall -j`: it uses forkserver, which execs the guest python (no binfmt_misc).
        dirs = [*root.glob("usr/lib/python3*"), *guest.pythonpath]
        compiles = [
            ["-m", "compileall", "-q", "-x", "/(sympy|mpmath)/|/tests?/", str(d)] for d in dirs
        ]
        env = guest.environ({"PYTHONDONTWRITEBYTECODE": ""})
        step("compileall", *(guest.command(c) for c in compiles), env=env)  # failures: harmless
        t0 = time.monotonic()
        probe = guest.run_python(["-c", _PROBE], timeout=300)
        timings["probe"] = round(time.monotonic() - t0, 1)
        if probe.returncode != 0:
            log.write_text(log.read_text() + probe.stdout + probe.stderr)
            raise fail("the guest python cannot import its libraries")
        facts = json.loads(probe.stdout)
        if int(facts["versions"]["paho-mqtt"].split(".")[0]) < 2:
            raise fail(f"edgeml needs paho-mqtt>=2, the guest has {facts['versions']['paho-mqtt']}")
        timings["total"] = round(time.monotonic() - started, 1)
        recipe = {k: v for k, v in spec.__dict__.items() if k != "cpuinfo"}
        manifest = {"key": entry.name, "spec": recipe, "mirror": mirror, "guest": facts}
        manifest["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest["build_seconds"] = timings
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(tmp, entry)
        say(f"{spec.arch}: built {entry} in {timings['total']} s")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _pip_python() -> str:
    """A host python that has pip: this one, else the repo's venv (pip downloads, never installs)."""
    venv = REPO / ".venv" / "bin" / "python"
    if importlib.util.find_spec("pip") is None and venv.exists():
        return str(venv)
    return sys.executable


def _fix_tree(spec: Spec, root: Path) -> None:
    """What the skipped maintainer scripts and a merged-/usr base would have provided."""
    for name in ("bin", "sbin", "lib"):  # trixie is merged-/usr, but extract makes no links
        if not (root / name).exists() and (root / "usr" / name).is_dir():
            (root / name).symlink_to(f"usr/{name}")
    for libdir in root.glob("usr/lib/*-linux-gnu*"):
        for alt in spec.lib_alternatives:
            for so in (libdir / alt).glob("lib*.so.3"):
                if not (libdir / so.name).exists():
                    (libdir / so.name).symlink_to(f"{alt}/{so.name}")
    # Without these, guest /dev and /tmp are the host's (qemu -L falls back to host paths).
    for name in ("dev", "tmp"):
        if (root / name).is_dir() and not (root / name).is_symlink():
            shutil.rmtree(root / name)
    if spec.cpuinfo:  # qemu 7.2 passes the host's x86 cpuinfo through: onnxruntime segfaults
        (root / "proc").mkdir(exist_ok=True)
        (root / "proc" / "cpuinfo").write_text(spec.cpuinfo)


_PROBE = """
import json, platform, sys
from importlib.metadata import version
import click, numpy, onnxruntime, paho.mqtt.client
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
    "providers": onnxruntime.get_available_providers(),
    "versions": {n: version(n) for n in ("onnxruntime", "numpy", "paho-mqtt", "click")}}))
"""


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(strip_noise(text).splitlines()[-lines:])


# -- command line --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="userland.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cache", type=Path, default=None, help="default: $EDGEML_ARM_CACHE or <repo>/build/arm"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    build = sub.add_parser("build", help="build (or find) userlands and print their facts")
    build.add_argument("arch", nargs="*", default=list(ARCHES))
    run = sub.add_parser("run", help="run the guest python3 with ARGS (after --)")
    run.add_argument("arch")
    run.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    if ns.cmd == "build":
        for arch in ns.arch:
            t0 = time.monotonic()
            land = ensure_userland(arch, ns.cache)
            ready = {"arch": land.arch, "root": str(land.root), "python": str(land.python)}
            print(
                json.dumps(
                    {**ready, "ready_in_s": round(time.monotonic() - t0, 2), **land.info}, indent=2
                )
            )
        return 0
    land = ensure_userland(ns.arch, ns.cache)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    return subprocess.call(land.command(args), env=land.environ())


if __name__ == "__main__":
    sys.exit(main())
