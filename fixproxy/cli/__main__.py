"""``python3 -m fixproxy.cli``: the same command line as the ``fixproxy`` script."""

from __future__ import annotations

from fixproxy.cli.main import main

main()
