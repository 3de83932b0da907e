"""fixproxy: a local FIX sidecar that signs Logons and speaks pinned TLS to Kalshi."""

from __future__ import annotations

__version__ = "0.1.0"
