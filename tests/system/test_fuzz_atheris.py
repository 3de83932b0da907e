"""The libFuzzer target of fuzz/ inside the normal suite.

Every seed of fuzz/corpus/ and every kept crash of fuzz/regressions/ is replayed in-process
through the target's own ``check``, without atheris. A short, seeded libFuzzer run then shows
that the target still starts, finds its way past the seeds and crashes on nothing new.

Regressions of defects that are reported but not fixed yet are listed in :data:`KNOWN_OPEN` and
run as strict expected failures: the fix makes them pass, which fails the test until the entry
is removed. A crash of the short run that reproduces one of them (same exception, same stack)
is an expected failure too; any other crash fails with the input that caused it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
FUZZ_DIR: Final = ROOT / "fuzz"
TARGET: Final = FUZZ_DIR / "fuzz_framer_logon.py"
CORPUS: Final = FUZZ_DIR / "corpus"
REGRESSIONS: Final = FUZZ_DIR / "regressions"
FUZZ_SECONDS: Final = 20
FUZZ_RUNS: Final = 30_000
"""The run stops at whichever comes first; with a fixed seed, the run limit makes it repeatable
on any machine fast enough to reach it."""
SUBPROCESS_TIMEOUT: Final = 120.0

KNOWN_OPEN: Final[dict[str, tuple[type[BaseException], str]]] = {}
"""Regression file name -> (the exception it raises until fixed, the defect)."""

Check = Callable[[bytes], None]
Signature = tuple[str, tuple[tuple[str, str, int], ...]]
"""Exception type and stack: (file, function, line) in the target, line 0 elsewhere, so that
one defect reached through the same functions counts once wherever its line in fixproxy is."""


def load_check() -> Check:
    """The target's ``check``, imported from its file (fuzz/ is not a package)."""
    spec = importlib.util.spec_from_file_location("fuzz_framer_logon", TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    check: Check = module.check
    return check


@pytest.fixture(scope="module")
def check() -> Check:
    return load_check()


def inputs(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir()
                  if path.is_file() and not path.name.startswith(".")
                  and path.name != "README.md")


def replay_params() -> list[object]:
    params: list[object] = []
    for path in [*inputs(CORPUS), *inputs(REGRESSIONS)]:
        known = KNOWN_OPEN.get(path.name) if path.parent == REGRESSIONS else None
        marks = [] if known is None else [pytest.mark.xfail(strict=True, raises=known[0],
                                                            reason=known[1])]
        params.append(pytest.param(path, id=f"{path.parent.name}/{path.name}", marks=marks))
    return params


def test_there_is_something_to_replay() -> None:
    assert len(inputs(CORPUS)) >= 5
    assert {path.name for path in inputs(REGRESSIONS)} >= set(KNOWN_OPEN)


@pytest.mark.parametrize("path", replay_params())
def test_replay(check: Check, path: Path) -> None:
    check(path.read_bytes())


def signature(check: Check, data: bytes) -> Signature | None:
    """The exception ``check(data)`` raises and where, or None if it raises nothing."""
    try:
        check(data)
    except Exception as exc:  # any exception is a finding to compare
        frames = traceback.extract_tb(exc.__traceback__)
        return type(exc).__name__, tuple(
            (Path(frame.filename).name, frame.name,
             (frame.lineno or 0) if frame.filename == str(TARGET) else 0)
            for frame in frames[1:])
    return None


@pytest.fixture
def _atheris_available() -> None:
    """Skip without atheris, except in CI, which installs it: there its absence is a failure."""
    if importlib.util.find_spec("atheris") is None:
        if os.environ.get("CI"):
            pytest.fail("atheris must be installed in CI (pip install '.[fuzz]')")
        pytest.skip("atheris is not installed: pip install '.[fuzz]'")


@pytest.mark.slow
@pytest.mark.usefixtures("_atheris_available")
def test_short_fuzzing_run_finds_nothing_new(check: Check, tmp_path: Path) -> None:
    # New inputs go to the first directory: a scratch copy, so the run leaves fuzz/ untouched.
    work = tmp_path / "work"
    shutil.copytree(CORPUS, work)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, str(TARGET), "-seed=1", f"-runs={FUZZ_RUNS}",
               f"-max_total_time={FUZZ_SECONDS}", "-timeout=10", "-max_len=8192",
               f"-dict={FUZZ_DIR / 'fix.dict'}", f"-artifact_prefix={artifacts}/", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=SUBPROCESS_TIMEOUT, check=False)
    log = done.stderr[-4000:]
    crashes = sorted(artifacts.iterdir())
    if done.returncode == 0:
        assert crashes == [], log
        assert "Done" in done.stderr, log
        return
    assert crashes, f"libFuzzer failed without leaving a crash (exit {done.returncode}):\n{log}"
    found = signature(check, crashes[0].read_bytes())
    assert found is not None, f"{crashes[0].name} does not reproduce in-process:\n{log}"
    known = {signature(check, (REGRESSIONS / name).read_bytes()): name for name in KNOWN_OPEN}
    if found in known:
        pytest.xfail(f"the run reproduced the open defect {known[found]}: "
                     f"{KNOWN_OPEN[known[found]][1]}")
    pytest.fail(f"new crash {crashes[0]} ({crashes[0].read_bytes()[:200]!r}): "
                f"{found}\n{log}")
