"""The rules of a pin set that the loader and the TLS layer share: one pin's syntax, and
which verify modes need pins."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixproxy.config.pins import PIN_PREFIX, canonical_pin, pin_conflict
from fixproxy.errors import ConfigError

PIN_SYNTAX = re.compile(r"sha256/[A-Za-z0-9+/]{43}=")
"""The accepted syntax, written independently of the code under test: 32 bytes of base64."""
BASE64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
A_PIN = "sha256/" + base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(("pin", "message"), [
    ("sha1/" + A_PIN[7:], "must start with 'sha256/'"),
    ("SHA256/" + A_PIN[7:], "must start with"),
    (A_PIN[7:], "must start with"),
    ("sha256/not*base64", "not valid base64"),
    (A_PIN[:-1], "not valid base64"),  # the padding is required
    (A_PIN + "=", "not valid base64"),
    (A_PIN[:20] + " " + A_PIN[20:], "not valid base64"),
    ("sha256/" + "é" * 43 + "=", "not valid base64"),  # not ASCII
    ("sha256/" + base64.b64encode(b"short").decode(), "holds 5 bytes, a SHA-256 has 32"),
    ("sha256/" + "A" * 64, "holds 48 bytes"),  # a SHA-384 length
])
def test_a_malformed_pin_is_a_config_error(pin: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        canonical_pin(pin)
    assert caught.value.key == "pins"


def test_a_well_formed_pin_is_returned_as_is() -> None:
    assert canonical_pin(A_PIN) == A_PIN


def test_unused_low_bits_are_cleared() -> None:
    # The last character before "=" carries two bits that decode to nothing: "B" is "A" + 1.
    loose = A_PIN[:-2] + chr(ord(A_PIN[-2]) + 1) + "="
    assert loose != A_PIN
    assert canonical_pin(loose) == A_PIN


@given(st.binary(min_size=32, max_size=32))
def test_every_computed_pin_is_canonical(digest: bytes) -> None:
    pin = PIN_PREFIX + base64.b64encode(digest).decode()
    assert canonical_pin(pin) == pin


@given(st.one_of(
    st.text(max_size=60),
    st.text(alphabet=BASE64_CHARS + "=", min_size=40, max_size=48).map("sha256/".__add__),
    st.text(alphabet=BASE64_CHARS, min_size=43, max_size=43).map(lambda b: f"sha256/{b}="),
))
def test_accepts_exactly_the_documented_syntax(pin: str) -> None:
    try:
        canonical = canonical_pin(pin)
    except ConfigError:
        assert PIN_SYNTAX.fullmatch(pin) is None
    else:
        assert PIN_SYNTAX.fullmatch(pin) is not None
        assert canonical_pin(canonical) == canonical
        assert base64.b64decode(canonical[7:]) == base64.b64decode(pin[7:])


@pytest.mark.parametrize(("verify", "pinned", "conflict"), [
    ("ca+pin", True, None),
    ("ca+pin", False, "needs pins"),
    ("pin", True, None),
    ("pin", False, "needs pins"),
    ("ca", False, None),
    ("ca", True, "ignores pins"),
])
def test_pin_conflict(verify: str, pinned: bool, conflict: str | None) -> None:
    assert pin_conflict(verify, pinned=pinned) == conflict
