"""Fixtures shared by the test modules: one RSA key per run, a FIX message builder, and the
close of the socket pairs a test left open.

Fixtures defined in ``support`` modules reach the tests from here, through
``pytest_plugins``, never by importing them into a test module by name: an imported fixture
looks unused to linters, and shadows the parameter that receives it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from support.frames import MakeFrame
from support.frames import make_frame as _make_frame
from support.relay import close_socket_pairs

pytest_plugins = ("support.config_files", "support.e2e", "support.quickfix_engine")


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """An RSA-2048 private key, generated once per test run (generation takes a while)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def make_frame() -> MakeFrame:
    """Build a framed FIXT.1.1 message from its MsgType and body fields."""
    return _make_frame


@pytest.fixture(autouse=True)
def _close_socket_pairs() -> Iterator[None]:
    """Socket pairs a test made stand in for peers it may never close: close them after it."""
    yield
    close_socket_pairs()
