"""Benchmark runs as fresh subprocesses: the child prints one ``RESULT {json}`` line, the parent reads it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

RESULT_PREFIX = "RESULT "


def emit(result: dict[str, Any]) -> None:
    """In the child: hand the result to the parent (anything else on stdout is ignored)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def read_result(proc: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    """In the parent: the child's result, or exit showing the end of its stderr."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{what} failed with exit code {proc.returncode}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])
