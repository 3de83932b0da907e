"""The exception tree of fixproxy.

Every error the program raises derives from :class:`FixProxyError`. Foreign exceptions
(``OSError``, ``ssl.SSLError``, trio's, TOML's, cryptography's) are translated where they enter
our code, with ``raise ... from exc``. This module imports nothing from fixproxy.
"""

from __future__ import annotations

from typing import Literal

Side = Literal["engine", "gateway"]


class FixProxyError(Exception):
    """Root of every error fixproxy raises."""


class ConfigError(FixProxyError):
    """A configuration problem, naming the dotted key and, where known, the file line."""

    def __init__(self, message: str, *, key: str = "", line: int | None = None,
                 path: str = "") -> None:
        self.key = key
        self.line = line
        self.path = path
        self.detail = message
        where = path
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        prefix = f"{where}: " if where else ""
        if key:
            prefix += f"{key}: "
        super().__init__(prefix + message)


class FixError(FixProxyError):
    """A FIX protocol problem; ``side`` says which peer misbehaved once the relay knows."""

    def __init__(self, message: str, *, side: Side | None = None) -> None:
        super().__init__(message)
        self.side: Side | None = side


class FramingError(FixError):
    """Bad BeginString, BodyLength or CheckSum, an oversize frame, or EOF inside a frame."""


class SessionError(FixError):
    """A message not allowed in this state, a duplicate key, or a sequence problem."""


class LogonRefused(FixError):
    """A Logon fixproxy will not forward. ``text`` is the 58 the engine receives."""

    def __init__(self, text: str, *, reason: str = "invalid_logon") -> None:
        super().__init__(text, side="engine")
        self.text = text
        self.reason = reason


class SigningError(FixProxyError):
    """A private key could not be loaded or used."""


class UpstreamError(FixProxyError):
    """The gateway could not be reached or failed the TLS checks."""

    result: str = "error"  # the label used by fixproxy_upstream_connects_total


class ConnectError(UpstreamError):
    """TCP connect failed (refused, unreachable, DNS)."""

    result = "refused"


class OutOfDescriptors(ConnectError):
    """No socket could be made for the gateway: fixproxy is at its open-file limit."""

    result = "fd_limit"


class ConnectTimeout(ConnectError):
    """TCP connect or TLS handshake did not finish within connect_timeout."""

    result = "timeout"


class TLSHandshakeError(UpstreamError):
    """The TLS handshake failed: certificate chain, hostname, protocol version."""

    result = "tls_error"


class PinMismatchError(UpstreamError):
    """The gateway's certificate chain matched none of the configured pins."""

    result = "pin_mismatch"

    def __init__(self, message: str, *, presented: tuple[str, ...],
                 expected: tuple[str, ...]) -> None:
        super().__init__(message)
        self.presented = presented
        self.expected = expected
