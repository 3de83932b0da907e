"""Log setup: the text layout, JSON lines and their fields, and the redaction filter."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from support.frames import MakeFrame

from fixproxy.cli.main import main
from fixproxy.errors import FixProxyError
from fixproxy.fix import tags
from fixproxy.fix.codec import render
from fixproxy.ops.logs import REDACTED, TEXT_FORMAT, redact, setup_logging
from fixproxy.proxy.admit import _ConnectionLog

SIGNATURE = "c2lnbmF0dXJlLXRoYXQtbXVzdC1uZXZlci1sZWFr"
PASSWORD = "hunter2-password"
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>\S+) (?P<msg>.*)")


@pytest.fixture
def root_restored() -> Iterator[None]:
    """Put the root logger's handlers and level back after a test installs its own."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _capture(fmt: str, level: str = "debug") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, "json" if fmt == "json" else "text", stream)
    return stream


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    lines = stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def _logon(make_frame: MakeFrame) -> bytes:
    return make_frame("A", (49, "api-key"), (56, "KalshiNR"), (95, len(SIGNATURE)),
                      (96, SIGNATURE), (554, PASSWORD), (1096, "kept"))


# --------------------------------------------------------------------------- text and JSON

@pytest.mark.usefixtures("root_restored")
def test_text_lines_keep_the_familiar_layout() -> None:
    stream = _capture("text", "info")
    logging.getLogger("fixproxy.test").info("session %s listening on %s", "s1", "127.0.0.1:1")
    logging.getLogger("fixproxy.test").debug("not at info")
    [line] = stream.getvalue().splitlines()
    match = TEXT_LINE.fullmatch(line)
    assert match is not None, line
    assert match.group("level", "logger", "msg") == (
        "INFO", "fixproxy.test", "session s1 listening on 127.0.0.1:1")
    assert TEXT_FORMAT == "%(asctime)s %(levelname)s %(name)s %(message)s"


@pytest.mark.usefixtures("root_restored")
def test_json_lines_carry_time_level_logger_and_message() -> None:
    stream = _capture("json", "info")
    logging.getLogger("fixproxy.test").warning("two\nlines, one record: %d", 42)
    logging.getLogger("fixproxy.test").debug("not at info")
    [line] = _json_lines(stream)
    assert set(line) == {"ts", "level", "logger", "msg"}
    assert RFC3339_MS.fullmatch(str(line["ts"])), line["ts"]
    assert line["level"] == "WARNING"
    assert line["logger"] == "fixproxy.test"
    assert line["msg"] == "two\nlines, one record: 42"


@pytest.mark.usefixtures("root_restored")
def test_the_relay_connection_log_reaches_json_as_session_and_conn_fields() -> None:
    stream = _capture("json")
    log = _ConnectionLog(logging.getLogger("fixproxy.relay"), {"conn": 7, "session": "s-1"})
    log.info("engine Logon accepted locally")
    [line] = _json_lines(stream)
    assert line["session"] == "s-1"
    assert line["conn"] == 7
    assert line["msg"] == "engine Logon accepted locally"


@pytest.mark.usefixtures("root_restored")
def test_json_reads_session_and_conn_from_record_attributes() -> None:
    stream = _capture("json")
    logger = logging.getLogger("fixproxy.test")
    logger.info("[other #1] text", extra={"session": "s2", "conn": 3})
    logger.info("no connection here")
    first, second = _json_lines(stream)
    # Attributes win; a prefix naming another connection is part of the message.
    assert (first["session"], first["conn"], first["msg"]) == ("s2", 3, "[other #1] text")
    assert "session" not in second
    assert "conn" not in second


@pytest.mark.usefixtures("root_restored")
def test_json_exc_info_is_a_redacted_string() -> None:
    stream = _capture("json")
    try:
        raise ValueError(f"bad Logon 96={SIGNATURE}|10=000|")
    except ValueError:
        logging.getLogger("fixproxy.test").exception("relay fault")
    [line] = _json_lines(stream)
    trace = line["exc_info"]
    assert isinstance(trace, str)
    assert trace.startswith("Traceback")
    assert "ValueError: bad Logon 96=<redacted>|10=000|" in trace
    assert SIGNATURE not in stream.getvalue()


@pytest.mark.usefixtures("root_restored")
def test_calling_setup_again_replaces_its_handler_only() -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    first = _capture("text")
    second = _capture("json")
    assert len(root.handlers) == before + 1
    logging.getLogger("fixproxy.test").info("once")
    assert first.getvalue() == ""
    assert [line["msg"] for line in _json_lines(second)] == ["once"]


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "text"), ("info", "xml")])
def test_unknown_level_or_format_is_refused(level: str, fmt: str) -> None:
    with pytest.raises(FixProxyError, match="unknown log"):
        setup_logging(level, fmt, io.StringIO())  # type: ignore[arg-type]  # checked at run


# --------------------------------------------------------------------------- redaction

@pytest.mark.usefixtures("root_restored")
@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("shape", ["repr", "percent-s", "soh-text", "pipes"])
def test_secrets_in_raw_messages_never_reach_the_stream(make_frame: MakeFrame, fmt: str,
                                                        shape: str) -> None:
    raw = _logon(make_frame)
    stream = _capture(fmt)
    logger = logging.getLogger("fixproxy.test")
    if shape == "repr":
        logger.info("received %r", raw)
    elif shape == "percent-s":
        logger.info("received %s", raw)
    elif shape == "soh-text":
        logger.info("received " + raw.decode())
    else:
        logger.info("received %s", raw.replace(b"\x01", b"|").decode())
    out = stream.getvalue()
    assert SIGNATURE not in out
    assert PASSWORD not in out
    text = str(_json_lines(stream)[0]["msg"]) if fmt == "json" else out
    assert f"96={REDACTED}" in text
    assert f"554={REDACTED}" in text
    assert "1096=kept" in text  # a longer tag ending in 96 is another field
    assert "56=KalshiNR" in text


def test_values_already_hidden_by_render_keep_their_length_note(make_frame: MakeFrame) -> None:
    rendered = render(_logon(make_frame))
    assert f"96=<redacted {len(SIGNATURE)} bytes>" in rendered
    assert redact(rendered) == rendered


@pytest.mark.usefixtures("root_restored")
@pytest.mark.parametrize("key_kind", ["rsa-pkcs8", "rsa-traditional", "ec"])
def test_private_key_blocks_are_redacted(rsa_key: rsa.RSAPrivateKey, key_kind: str) -> None:
    if key_kind == "ec":
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
    else:
        pem = rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8 if key_kind == "rsa-pkcs8"
            else serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption())
    body = pem.decode().splitlines()[2]  # a line from the middle of the key
    stream = _capture("text")
    logger = logging.getLogger("fixproxy.test")
    logger.error("cannot use key: %s; after", pem.decode().strip())
    logger.error("as bytes %r", pem)
    logger.error("cut short: %s", pem.decode()[:200])
    out = stream.getvalue()
    assert body not in out
    assert "PRIVATE KEY" not in out
    assert "cannot use key: <redacted>; after" in out
    assert out.count(REDACTED) == 3


@pytest.mark.usefixtures("root_restored")
def test_badly_formatted_call_does_not_raise_or_leak_its_arguments() -> None:
    stream = io.StringIO()
    handler = setup_logging("debug", "text", stream)
    # Straight to the handler: pytest's own capture handler would raise on this record first.
    record = logging.LogRecord("fixproxy.test", logging.INFO, __file__, 1, "count %d",
                               (f"554={PASSWORD}",), None)
    handler.handle(record)
    out = stream.getvalue()
    assert "count %d (log arguments could not be formatted)" in out
    assert PASSWORD not in out


_PLAIN_TAG = st.integers(1, 9999).filter(lambda tag: tag not in tags.SECRET_TAGS)
_PLAIN_VALUE = st.from_regex(r"[A-Za-z0-9 .:-]{1,12}", fullmatch=True)


@given(
    secret=st.text(st.characters(codec="ascii", exclude_characters="\x01|\r\n\\=0123456789"),
                   min_size=12, max_size=40).map(lambda text: "Z" + text),
    tag=st.sampled_from([96, 554, 925]),
    before=st.lists(st.tuples(_PLAIN_TAG, _PLAIN_VALUE), max_size=4),
    after=st.lists(st.tuples(_PLAIN_TAG, _PLAIN_VALUE), max_size=4),
    delimiter=st.sampled_from(["\x01", "|", "\\x01"]),
)
def test_a_secret_field_never_survives_redaction(secret: str, tag: int,
                                                 before: list[tuple[int, str]],
                                                 after: list[tuple[int, str]],
                                                 delimiter: str) -> None:
    fields = [f"{t}={v}" for t, v in before] + [f"{tag}={secret}"] + \
        [f"{t}={v}" for t, v in after]
    out = redact(delimiter.join(fields) + delimiter)
    assert secret not in out
    assert f"{tag}={REDACTED}" in out
    for plain, value in before + after:  # every other field is left alone
        assert f"{plain}={value}{delimiter}" in out


# --------------------------------------------------------------------------- the CLI

def test_every_command_with_a_log_level_takes_a_log_format() -> None:
    for command in ("run", "sim", "demo"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0
        assert "--log-level" in result.output
        assert "--log-format [text|json]" in result.output


def test_demo_with_json_format_writes_json_lines_on_stderr() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fixproxy.cli", "demo", "--log-level", "debug",
         "--log-format", "json"],
        capture_output=True, timeout=120, check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert lines
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= set(line)
        assert RFC3339_MS.fullmatch(line["ts"])
    relay = [line for line in lines if line["logger"] == "fixproxy.relay"]
    assert relay
    assert all(line["session"] == "demo" and line["conn"] == 1 for line in relay)
    assert re.search(r"96=(?!<redacted)", stderr) is None
