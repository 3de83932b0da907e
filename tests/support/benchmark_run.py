"""Run a benchmark module as the operator would, and read its JSON result.

The benchmark lives outside the installed package, so it runs from the repository root as a
subprocess. ``subprocess.run`` kills it on its timeout; the benchmark's own children die with
it (parent-death signal) and are stopped by it on every other exit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(module_args: Sequence[str], out: Path, timeout: float
                  ) -> tuple[str, dict[str, Any]]:
    """``python3 -m <module_args> --json <out>``: its stdout and its result. Its exit status
    must say what the result's ``ok`` says (0 when ok, 1 when not)."""
    done = subprocess.run([sys.executable, "-m", *module_args, "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert out.exists(), f"no result; stderr:\n{done.stderr[-4000:]}\nstdout:\n{done.stdout}"
    result: dict[str, Any] = json.loads(out.read_text())
    assert done.returncode == (0 if result["ok"] else 1), done.stderr[-4000:]
    return done.stdout, result
