"""Run every benchmark in bench/ in turn (``make bench``); each prints its own medians and ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# every bench_*.py beside this file (a new benchmark cannot be forgotten here)
BENCHES = sorted(p.name for p in Path(__file__).resolve().parent.glob("bench_*.py"))


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for name in BENCHES:
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run([sys.executable, str(here / name)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
