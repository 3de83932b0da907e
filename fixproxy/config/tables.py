"""Typed, line-aware access to the tables of a parsed TOML document.

Theory of operation
-------------------
``tomllib`` reports no positions for values, so lines are found by a second, deliberately
shallow pass over the text: it follows table headers (``[gateway]``, the n-th ``[[session]]``)
and records where each ``key =`` first appears; a key that is missing points at its table's
header. The alternative, a position-tracking TOML parser, was rejected: a second full parser
could disagree with ``tomllib`` about what the file means, while a line finder that misses only
costs the line number in a message.

A table's getters check the TOML type (a boolean where a number is wanted included, although
Python's ``bool`` is an ``int``) and the range, and raise a
:class:`~fixproxy.errors.ConfigError` naming the dotted key; the loader adds the line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Final, Protocol, cast

from fixproxy.errors import ConfigError

# --- finding lines ------------------------------------------------------------------------

_KEY_PART: Final = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_KEY_PART_RE: Final = re.compile(_KEY_PART)
_KEY_LINE: Final = re.compile(rf"\s*(?P<key>{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")
_HEADER_LINE: Final = re.compile(
    rf"\s*(?P<open>\[\[?)\s*(?P<name>{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]\]?\s*(?:#.*)?")
_TRAILING_INDEX: Final = re.compile(r"\[\d+\]$")


def _key_parts(text: str) -> list[str]:
    parts = []
    for part in _KEY_PART_RE.findall(text):
        parts.append(part[1:-1] if part[:1] in ("'", '"') else part)
    return parts


class LineIndex:
    """Where each dotted key and table header first appears in the file text (1-based)."""

    def __init__(self, text: str) -> None:
        self.keys: dict[str, int] = {}
        self.headers: dict[str, int] = {}
        array_counts: dict[tuple[str, ...], int] = {}
        prefix = ""
        open_quote: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if open_quote is not None:
                # Inside a multi-line string nothing is a key; it ends at the next delimiter.
                if open_quote in line:
                    open_quote = None
                continue
            header = _HEADER_LINE.fullmatch(line)
            if header is not None:
                parts = _key_parts(header["name"])
                if header["open"] == "[[":
                    array_counts[tuple(parts)] = array_counts.get(tuple(parts), 0) + 1
                segments = []
                for i, part in enumerate(parts):
                    count = array_counts.get(tuple(parts[: i + 1]))
                    segments.append(part if count is None else f"{part}[{count - 1}]")
                prefix = ".".join(segments)
                self.headers.setdefault(prefix, number)
                continue
            key = _KEY_LINE.match(line)
            if key is not None:
                dotted = ".".join(_key_parts(key["key"]))
                self.keys.setdefault(f"{prefix}.{dotted}" if prefix else dotted, number)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    open_quote = quote
                    break

    def line_of(self, key: str) -> int | None:
        """The line of ``key``, else of the nearest enclosing key or table header."""
        while key:
            if key in self.keys:
                return self.keys[key]
            if key in self.headers:
                return self.headers[key]
            # A table written with dotted keys (``tls.pins = ...``) has no line of its own.
            inner = [line for name, line in self.keys.items() if name.startswith(key + ".")]
            if inner:
                return min(inner)
            if _TRAILING_INDEX.search(key):
                key = _TRAILING_INDEX.sub("", key)
            else:
                key = key.rpartition(".")[0]
        return None


# --- typed access to one table ------------------------------------------------------------


MAX_TIMEOUT: Final = 300.0
"""Longest connect or Logon timeout accepted, in seconds: beyond five minutes a stuck connect or a
silent engine is a fault to report, not something to wait out."""


class ErrorReporter(Protocol):
    """What a table needs of the loader: errors that name the file and the line of a key."""

    def error(self, message: str, key: str) -> ConfigError:
        """A ConfigError for ``key`` (a dotted key), with the line where it is written."""


def toml_type(value: object) -> str:
    """How a TOML document spells the type of ``value`` ("an integer"), for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time"
    return type(value).__name__


class Table:
    """One TOML table with its dotted key prefix; every getter raises ConfigError on misuse."""

    def __init__(self, loader: ErrorReporter, data: Mapping[str, object], prefix: str,
                 label: str) -> None:
        self.loader = loader
        self.data = data
        self.prefix = prefix
        self.label = label

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return self.loader.error(message, self.key(name))

    def has(self, name: str) -> bool:
        return name in self.data

    def check_keys(self, allowed: frozenset[str]) -> None:
        for name in self.data:
            if name in allowed:
                continue
            message = f"unknown key {name!r} in {self.label}"
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
            else:
                message += f"; valid keys: {', '.join(sorted(allowed))}"
            raise self.error(name, message)

    def _wrong_type(self, name: str, value: object, wanted: str) -> ConfigError:
        return self.error(name, f"expected {wanted}, got {toml_type(value)} {value!r}")

    def string(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None or isinstance(value, str):
            return value
        raise self._wrong_type(name, value, "a string")

    def required_string(self, name: str) -> str:
        value = self.string(name)
        if value is None:
            raise self.error(name, f"missing required key {name!r} in {self.label}")
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.data.get(name)
        if value is None or isinstance(value, bool):
            return value
        raise self._wrong_type(name, value, "true or false")

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong_type(name, value, "an integer")
        if not low <= value <= high:
            raise self.error(name, f"{value} is out of range; expected {low}..{high}")
        return value

    def seconds(self, name: str, *, maximum: float = MAX_TIMEOUT,
                allow_zero: bool = False) -> float | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong_type(name, value, "a number of seconds")
        seconds = float(value)
        # Written so that NaN fails too: every comparison with NaN is false.
        if allow_zero:
            if not 0 <= seconds <= maximum:
                raise self.error(
                    name, f"{value} seconds is out of range; expected at least 0 and at most "
                          f"{maximum:g}")
        elif not 0 < seconds <= maximum:
            raise self.error(
                name, f"{value} seconds is out of range; expected more than 0 and at most "
                      f"{maximum:g}")
        return seconds

    def string_list(self, name: str) -> tuple[str, ...] | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._wrong_type(name, value, "an array of strings")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.loader.error(
                    f"expected a string, got {toml_type(item)} {item!r}",
                    f"{self.key(name)}[{index}]")
        return tuple(cast(list[str], value))
