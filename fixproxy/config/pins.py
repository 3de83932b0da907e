"""The rules of a gateway pin set: the syntax of one pin.

Two callers apply them: the loader, to an operator's file, and the TLS layer, to every policy
a session trusts, including those built in code without a file (the demo, the benchmark,
tests). The rules live here once, below both; the loader words its own messages, which name
the dotted key and the line. Matching pins against certificates is :mod:`fixproxy.net.pins`.
"""

from __future__ import annotations

import base64
from typing import Final

from fixproxy.errors import ConfigError

PIN_PREFIX: Final = "sha256/"
"""A pin is ``sha256/`` and the base64 of the SHA-256 of a certificate's DER
SubjectPublicKeyInfo."""
_SHA256_BYTES: Final = 32


def canonical_pin(pin: str) -> str:
    """Check one pin's syntax and return it with canonical base64.

    Accepts exactly ``sha256/`` followed by 43 base64 characters and ``=``. Canonical means
    the unused low bits of the last character are zero, as every encoder writes them, so a
    configured pin compares equal to a computed one.

    Raises:
        ConfigError: (key ``pins``) the prefix is missing, the rest is not strict base64, or it
            does not hold 32 bytes.
    """
    if not pin.startswith(PIN_PREFIX):
        raise ConfigError(f"pin {pin!r} must start with {PIN_PREFIX!r}", key="pins")
    try:
        digest = base64.b64decode(pin[len(PIN_PREFIX):], validate=True)
    except ValueError as exc:  # binascii.Error; or a character outside ASCII
        raise ConfigError(f"pin {pin!r} is not valid base64", key="pins") from exc
    if len(digest) != _SHA256_BYTES:
        raise ConfigError(f"pin {pin!r} holds {len(digest)} bytes, a SHA-256 has 32",
                          key="pins")
    return PIN_PREFIX + base64.b64encode(digest).decode("ascii")
