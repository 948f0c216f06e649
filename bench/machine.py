"""The machine a benchmark ran on, printed at its start and end so a reader can judge the numbers."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "none found"
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        out = subprocess.run(query, capture_output=True, text=True)
        gpu = out.stdout.strip().replace("\n", "; ") or f"nvidia-smi failed: {out.stderr.strip()}"
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model, "gpu": gpu, "load": os.getloadavg()}


def describe_machine(label: str) -> None:
    m = machine()
    load = " ".join(f"{v:.2f}" for v in m["load"])
    print(f"machine ({label}): nproc {m['nproc']}, cpu {m['cpu']!r}, gpu {m['gpu']}, "
          f"load average {load}", flush=True)


def describe_code(paths: tuple[str, ...] = ("hpo",)) -> None:
    """The commit, and the files under ``paths`` that differ from it, with a hash of each (a
    benchmark run on a working tree that others are changing says which code it measured)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()

    changed = [line[3:] for line in git("status", "--porcelain", "--", *paths).splitlines()]
    hashes = {}
    for name in changed:
        path = Path(name)
        if path.is_file():
            hashes[name] = hashlib.sha1(path.read_bytes()).hexdigest()[:8]
    shown = ", ".join(f"{k} {v}" for k, v in sorted(hashes.items())) or "none"
    print(f"code: commit {git('rev-parse', '--short', 'HEAD')}; changed in the working tree: {shown}", flush=True)
