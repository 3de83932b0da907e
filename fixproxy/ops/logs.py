"""Log setup: human-readable text or one JSON object per line, always redacted.

Theory of operation
-------------------
fixproxy's logs go to stderr, where an operator reads them or a collector ships them. Text
stays the format people read; JSON gives a collector fields it need not parse out of prose:
``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``msg``, and ``session`` and
``conn`` when the line belongs to one engine connection, so one connection's story can be
selected from interleaved sessions with a field match instead of a regular expression.

The Logon carries the RSA-PSS signature in RawData (96) and the FIX protocol has Password
(554) and NewPassword (925) for gateways that use them. The code that logs a message renders it
through :func:`fixproxy.fix.codec.render`, which hides those values; but one careless
``log.debug("%r", raw)`` would print them, and a key file's text could end up in an exception
message. So the handler carries :class:`RedactionFilter`, a last line of defence that rewrites
the final text of every record (message, exception and stack text) before any formatter sees
it: each secret FIX field, whether its fields are separated by SOH, by ``|`` or by the
``\\x01`` escape of a ``bytes`` repr, and each PEM private key block become ``<redacted>``.
A value runs to the next delimiter or the end of the line, so an unusual layout redacts too
much rather than too little. Redacting at the source only (and trusting every call site) was
rejected: the filter costs one regular expression per record, and logging is never on the
per-message path.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Final, Literal, TextIO

from fixproxy.errors import FixProxyError
from fixproxy.fix import tags

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"
"""The text layout, unchanged from the first releases: operators' greps depend on it."""
REDACTED: Final = "<redacted>"
STRUCTURED_FIELDS: Final = ("session", "conn")
"""Record attributes copied into a JSON line when present (the relay's connection adapter
sets them)."""

_SECRET_TAG_ALTERNATION: Final = "|".join(str(tag) for tag in sorted(tags.SECRET_TAGS))
_SECRET_FIELD: Final = re.compile(
    # A tag not glued to a longer number (1096= is another field; the "1" ending a "\x01"
    # escape does not count), its value up to the next SOH, "|", the four characters "\x01"
    # of a bytes repr, or the end of the line. A value already hidden by codec.render
    # ("<redacted 344 bytes>") keeps its length note.
    rf"(?:(?<![0-9])|(?<=\\x01))(?P<tag>{_SECRET_TAG_ALTERNATION})="
    r"(?!<redacted(?: [0-9]+ bytes)?>(?:[\x01|\r\n]|\\x01|$))"
    r"(?:(?!\\x01)[^\x01|\r\n])+"
)
_PRIVATE_KEY: Final = re.compile(
    # Any PEM private key (PKCS#8, PKCS#1 "RSA", "EC", "ENCRYPTED", "OPENSSH"); an unfinished
    # block (a truncated message) is hidden to the end of the text.
    r"-----BEGIN[A-Z0-9 ]* PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]* PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
_CONNECTION_PREFIX: Final = re.compile(r"\[(?P<session>[^\]\s#]+) #(?P<conn>\d+)\] ")
"""The prefix the relay's connection adapter puts on each message."""


def redact(text: str) -> str:
    """``text`` with secret FIX field values and PEM private key blocks replaced."""
    if "=" in text:
        text = _SECRET_FIELD.sub(rf"\g<tag>={REDACTED}", text)
    if "PRIVATE KEY-----" in text:
        text = _PRIVATE_KEY.sub(REDACTED, text)
    return text


class RedactionFilter(logging.Filter):
    """Rewrites a record's final message, exception and stack text through :func:`redact`.

    The formatted message replaces ``msg`` and ``args`` is cleared, so every formatter
    (and every handler after this one) sees only the redacted text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A call site with mismatched arguments: logging would print the raw arguments
            # in its error report, which may be exactly what must not be printed.
            message = f"{_safe_str(record.msg)} (log arguments could not be formatted)"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


_EXCEPTION_FORMATTER: Final = logging.Formatter()


def _rfc3339(created: float, msecs: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, session, conn, exc_info.

    ``session`` and ``conn`` come from the record's attributes (``extra=``). A message that
    only carries them as the connection adapter's ``[session #conn]`` prefix has them parsed
    out of it; either way the prefix is not repeated in ``msg``.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields: dict[str, object] = {}
        for name in STRUCTURED_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                fields[name] = value
        prefix = _CONNECTION_PREFIX.match(message)
        if prefix is not None:
            if not fields:
                fields = {"session": prefix["session"], "conn": int(prefix["conn"])}
            if (str(fields.get("session")) == prefix["session"]
                    and str(fields.get("conn")) == prefix["conn"]):
                message = message[prefix.end():]
        line: dict[str, object] = {
            "ts": _rfc3339(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "msg": message,
            **fields,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        # ASCII-only output survives any stderr encoding; non-JSON values (an object passed
        # as extra) are shown by str() rather than failing the line.
        return json.dumps(line, ensure_ascii=True, default=str)


class _FixproxyHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`setup_logging` installs; a second call replaces it."""


def setup_logging(level: str, fmt: LogFormat = "text",
                  stream: TextIO | None = None) -> logging.Handler:
    """Send every log record at ``level`` and above to ``stream``, redacted, as ``fmt``.

    Calling it again replaces the handler it installed before (and leaves others alone).

    Args:
        level: one of ``debug``, ``info``, ``warning``, ``error`` (any case).
        fmt: ``text`` (human-readable lines) or ``json`` (one JSON object per line).
        stream: where lines go; stderr when None.
    Returns:
        The installed handler.
    Raises:
        FixProxyError: an unknown level or format.
    """
    if level.lower() not in LOG_LEVELS:
        raise FixProxyError(f"unknown log level {level!r}; expected one of "
                            f"{', '.join(LOG_LEVELS)}")
    if fmt not in LOG_FORMATS:
        raise FixProxyError(f"unknown log format {fmt!r}; expected one of "
                            f"{', '.join(LOG_FORMATS)}")
    handler = _FixproxyHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactionFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _FixproxyHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler
