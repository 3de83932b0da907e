"""A reproducible benchmark of fixproxy against stunnel and direct TLS.

``python3 -m bench`` runs it; ``python3 -m bench --quick`` is the small correctness run used by
CI. See ``bench/README.md`` for what is measured and how to read the result.
"""

from __future__ import annotations

from fixproxy.errors import FixProxyError


class BenchError(FixProxyError):
    """The benchmark could not run or a configuration did not work correctly."""
