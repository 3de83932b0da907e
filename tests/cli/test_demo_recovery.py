"""``fixproxy demo --recovery`` as an operator runs it: a real process that shows fills missed
across a dropped connection delivered, recovered, before live traffic."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from click.testing import CliRunner

from fixproxy.cli.main import main

FIXPROXY = (sys.executable, "-m", "fixproxy")


def test_demo_recovery_shows_the_missed_fills_recovered() -> None:
    result = subprocess.run([*FIXPROXY, "demo", "--recovery", "--orders", "2"],
                            capture_output=True, timeout=120, check=False,
                            env={**os.environ, "PYTHONWARNINGS": "error"})
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "the gateway drops the connection" in out
    after = out.split("engine logs on again", 1)[1]
    fills = re.findall(r"34=(\d+) FILL +11=(rest-\d) .*97=Y \(recovered\)", after)
    assert sorted(cl for _, cl in fills) == ["rest-0", "rest-1"]
    assert [int(seq) for seq, _ in fills] == [2, 3]
    assert re.search(r"34=4 new +11=live-1", after)
    assert 'fixproxy_recovered_reports_total{session="demo"} 2' in out


def test_demo_recovery_cannot_serve() -> None:
    result = CliRunner().invoke(main, ["demo", "--recovery", "--serve"])
    assert result.exit_code == 2
    assert "cannot be combined with --serve" in result.output
