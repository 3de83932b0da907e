"""Configuration files for the config tests: a text builder for each table, a directory holding
the files they name, loading helpers, and the shape of a case whose error names a key and a line.

The ``confdir`` fixture reaches every test through ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fixproxy.config.loader import load_config
from fixproxy.config.model import Config, SessionConfig

EXAMPLE: Path = Path(__file__).resolve().parents[2] / "conf" / "fixproxy.toml"

API_KEYS = (
    "11111111-1111-4111-8111-111111111111",
    "22222222-2222-4222-8222-222222222222",
    "33333333-3333-4333-8333-333333333333",
)
PIN_A = "sha256/" + "A" * 43 + "="
PIN_B = "sha256/" + "B" * 43 + "="
MARK = "#<"
"""Marks the line a case expects the error on."""
FILES = ("k0.key", "k1.key", "k2.key", "cert.pem", "other.pem", "ca.pem")


def session(index: int, *lines: str, drop: tuple[str, ...] = (), header: str = "") -> str:
    """A valid [[session]] number ``index``, with ``lines`` replacing or adding keys."""
    base = {
        "name": f'"s{index}"',
        "listen": f'"127.0.0.1:{9878 + index}"',
        "endpoint": '"KalshiNR"',
        "api_key": f'"{API_KEYS[index]}"',
        "private_key": f'"k{index}.key"',
    }
    given = {line.split("=", 1)[0].strip() for line in lines}
    kept = [f"{key} = {value}" for key, value in base.items()
            if key not in drop and key not in given]
    return "\n".join([f"[[session]] {header}".rstrip(), *kept, *lines]) + "\n"


def gateway(*lines: str) -> str:
    return "\n".join(["[gateway]", *lines]) + "\n"


def metrics(*lines: str) -> str:
    return "\n".join(["[metrics]", *lines]) + "\n"


def maintenance(*lines: str) -> str:
    return "\n".join(["[maintenance]", *lines]) + "\n"


def backoff(*lines: str) -> str:
    return "\n".join(["[backoff]", *lines]) + "\n"


def proxy(*lines: str) -> str:
    return "\n".join(["[proxy]", *lines]) + "\n"


@pytest.fixture(name="confdir")
def confdir_fixture(tmp_path: Path) -> Path:
    """A directory holding the files the cases refer to (empty: they are never opened)."""
    for name in FILES:
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def write(directory: Path, text: str) -> Path:
    path = directory / "fixproxy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(directory: Path, text: str) -> Config:
    return load_config(write(directory, text))


def load_one(directory: Path, text: str) -> SessionConfig:
    config = load(directory, text)
    assert len(config.sessions) == 1
    return config.sessions[0]


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    key: str
    message: str


def expected_line(text: str) -> int:
    lines = [number for number, line in enumerate(text.splitlines(), start=1) if MARK in line]
    assert len(lines) == 1, "each case marks exactly one line"
    return lines[0]
