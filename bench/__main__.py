"""``python3 -m bench``: run the benchmark (``--help`` lists the options)."""

from __future__ import annotations

from bench.runner import main

raise SystemExit(main())
