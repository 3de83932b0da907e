"""The rules of a gateway pin set: the syntax of one pin, and which verify modes need pins.

Two callers apply them: the loader, to an operator's file, and the TLS layer, to every policy
a session trusts, including those built in code without a file (the demo, the benchmark,
tests). The rules live here once, below both; the loader words its own messages, which name
the dotted key and the line. Matching pins against certificates is :mod:`fixproxy.net.pins`.
"""

from __future__ import annotations

import base64
from typing import Final, Literal

from fixproxy.errors import ConfigError

PIN_PREFIX: Final = "sha256/"
"""A pin is ``sha256/`` and the base64 of the SHA-256 of a certificate's DER
SubjectPublicKeyInfo."""
_SHA256_BYTES: Final = 32

PinConflict = Literal["needs pins", "ignores pins"]


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


def pin_conflict(verify: str, *, pinned: bool) -> PinConflict | None:
    """How a verify mode contradicts the presence of pins, or None when they agree.

    ``pin`` and ``ca+pin`` trust nothing without a pin or a ``pinned_cert``
    (``"needs pins"``); ``ca`` would silently ignore the ones it is given (``"ignores pins"``),
    which an operator who wrote them never means.

    Args:
        verify: a verify mode (``ca+pin``, ``ca`` or ``pin``).
        pinned: whether any pin or a ``pinned_cert`` applies.
    """
    if verify == "ca":
        return "ignores pins" if pinned else None
    return None if pinned else "needs pins"
