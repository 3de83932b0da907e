"""Secrets never reach the logs: the Logon signature (96), passwords (554), key material and
the key's passphrase, searched for in everything a DEBUG run logs.

One full session runs in-process (the simulator and fixproxy on loopback) with every logger at
DEBUG, an encrypted private key whose passphrase comes from the environment, and an engine Logon
carrying Password (554). Afterwards every captured record (message, arguments, extras,
tracebacks) and everything written to stdout and stderr is searched for each secret in the
forms a careless log line could take: as sent, base64, hex, repr, and fragments. The search
helper is itself shown to find a deliberately logged copy of every form, so an empty result
means the secrets were absent, not that the search was blind.
"""

from __future__ import annotations

import base64
import logging
import re
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry
from support.config import config_with
from support.e2e import E2EMaterial, ProxyPair, open_proxy_pair

from fixproxy.cli.check import preflight
from fixproxy.errors import SigningError
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage
from fixproxy.kalshi import ENDPOINTS
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.runtime import build_runtime
from fixproxy.signing import PassphraseSource, load_private_key, verify_signature

PASSWORD: Final = "Tr4de-Pa55word-61f0c2"
"""The engine's Password (554): not Kalshi's, but engines send one and it must stay hidden."""
PASSPHRASE: Final = "key-passphrase-8d1e7b3a"
PASSPHRASE_ENV: Final = "FIXPROXY_TEST_KEY_PASSPHRASE"
ORDERS: Final = 5
MIN_FORM_LENGTH: Final = 12
"""Shorter needles could turn up by chance in unrelated text."""
FRAGMENT: Final = 24
"""Characters in a fragment of the signature: a truncated copy in a log is a leak too."""
PEM_MARKERS: Final = ("-----BEGIN", "-----END", "PRIVATE KEY-----")


def forms_of(name: str, secret: bytes) -> dict[str, str]:
    """The text forms in which ``secret`` could appear in a log line."""
    return {
        f"{name} as text": secret.decode("latin-1"),
        f"{name} base64": base64.b64encode(secret).decode("ascii"),
        f"{name} hex": secret.hex(),
        f"{name} HEX": secret.hex().upper(),
        f"{name} repr": repr(secret)[2:-1],
    }


def signature_forms(sent: bytes) -> dict[str, str]:
    """The signature as sent in 96 (base64 text), the raw RSA bytes it encodes, and
    fragments of both."""
    raw = base64.b64decode(sent, validate=True)
    text = sent.decode("ascii")
    unpadded = text.rstrip("=")
    return {
        **forms_of("signature (96) as sent", sent),
        **forms_of("signature raw bytes", raw),
        "signature (96) head": text[:FRAGMENT],
        "signature (96) tail": unpadded[-FRAGMENT:],
        "signature (96) middle": text[160:160 + FRAGMENT],
        "signature raw hex head": raw.hex()[:FRAGMENT],
        "signature urlsafe base64": base64.urlsafe_b64encode(raw).decode("ascii")[:FRAGMENT],
    }


def key_forms(material: E2EMaterial, encrypted_pem: bytes) -> dict[str, str]:
    """PEM markers, lines of the key's PEM bodies, and its private numbers."""
    key = load_private_key(material.private_key)
    numbers = key.private_numbers()
    plain_pem = material.private_key.read_bytes()
    forms = {f"PEM marker {marker}": marker for marker in PEM_MARKERS}
    for label, pem in (("PEM", plain_pem), ("encrypted PEM", encrypted_pem)):
        body = [line for line in pem.decode("ascii").splitlines()
                if line and not line.startswith("-----") and ":" not in line]
        forms[f"{label} first body line"] = body[0]
        forms[f"{label} last full body line"] = body[-2]
    for letter, value in (("d", numbers.d), ("p", numbers.p), ("q", numbers.q)):
        forms[f"private {letter} decimal"] = str(value)[:30]
        forms[f"private {letter} hex"] = format(value, "x")[:30]
    return forms


def find_secrets(texts: Iterable[str], forms: dict[str, str]) -> list[str]:
    """Names of the ``forms`` that occur in any of ``texts``."""
    corpus = list(texts)
    return [name for name, needle in forms.items() if any(needle in text for text in corpus)]


def captured_texts(caplog: pytest.LogCaptureFixture, output: Iterable[str]) -> list[str]:
    """Everything logged: the formatted text, and per record its message, arguments, extras
    and traceback, plus the given stdout/stderr."""
    texts = [caplog.text, *output]
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
        texts.append(repr(vars(record)))
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
        if record.exc_text:
            texts.append(record.exc_text)
    return texts


def encrypted_copy(material: E2EMaterial, directory: Path) -> Path:
    """The session's key, re-encrypted under PASSPHRASE, mode 0600."""
    key = load_private_key(material.private_key)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(PASSPHRASE.encode()))
    path = directory / "encrypted.key"
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


async def run_session(pair: ProxyPair) -> None:
    """Log on with a Password (554), trade, test the line, log out."""
    engine = await pair.connect_engine()
    answer = await engine.logon(extra=[(tags.PASSWORD, PASSWORD)])
    assert answer is not None and answer.msg_type == tags.MT_LOGON, answer
    for _ in range(ORDERS):
        await engine.new_order()
    for _ in range(ORDERS):
        await engine.receive_type(tags.MT_EXECUTION_REPORT)
    await engine.test_peer()
    logout = await engine.logout()
    assert logout is not None and logout.msg_type == tags.MT_LOGOUT


async def test_no_secret_reaches_any_log_at_debug(
        e2e_material: E2EMaterial, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="fixproxy")
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    key_path = encrypted_copy(e2e_material, tmp_path)
    overrides = {"private_key": key_path,
                 "private_key_passphrase": PassphraseSource(env=PASSPHRASE_ENV)}

    async with open_proxy_pair(e2e_material, session_overrides=overrides) as pair:
        await run_session(pair)
        sent_logon = FixMessage.parse(pair.sim.last_logon[pair.api_key])
        signature = sent_logon.get(tags.RAW_DATA)

    # The secrets exist and really went over the wire, so there was something to leak.
    assert signature is not None and len(signature) == 344
    assert sent_logon.get(tags.PASSWORD) == PASSWORD.encode()
    payload = b"\x01".join((sent_logon.get(tags.SENDING_TIME) or b"", tags.MT_LOGON,
                            sent_logon.get(tags.MSG_SEQ_NUM) or b"",
                            pair.api_key.encode(), pair.endpoint.encode()))
    assert verify_signature(e2e_material.public_key, payload, signature)
    # Every fixproxy logger reaches the capture: none stops propagation.
    fixproxy_loggers = [logging.getLogger(name) for name in logging.root.manager.loggerDict
                        if name.startswith("fixproxy")]
    assert fixproxy_loggers
    assert all(one.propagate for one in fixproxy_loggers)

    forms = {**signature_forms(signature),
             **forms_of("password (554)", PASSWORD.encode()),
             **forms_of("key passphrase", PASSPHRASE.encode()),
             **key_forms(e2e_material, key_path.read_bytes())}
    assert all(len(needle) >= MIN_FORM_LENGTH or name.startswith("PEM marker")
               for name, needle in forms.items())
    out, err = capfd.readouterr()
    texts = captured_texts(caplog, (out, err))

    assert find_secrets(texts, forms) == []

    # ... and not for lack of logging: both Logons were logged, rendered with the secrets
    # redacted, and so was the simulator's DEBUG transcript.
    assert any(r.name == "fixproxy.relay" and "96=<redacted" in r.getMessage()
               and "554=<redacted" in r.getMessage() for r in caplog.records)
    assert any(r.name == "fixproxy.sim" and r.levelno == logging.DEBUG for r in caplog.records)
    assert len(caplog.records) > 2 * ORDERS

    # The search is not blind: a copy of any form, logged, is found through the same capture.
    for name, needle in forms.items():
        assert name in find_secrets([f"leaked: {needle}."], forms), name
    logging.getLogger("fixproxy.relay").debug("careless: %s", signature.decode())
    logging.getLogger("fixproxy.sim").info("careless: %r", PASSWORD.encode())
    found = find_secrets(captured_texts(caplog, ()), forms)
    assert "signature (96) as sent as text" in found
    assert "signature (96) head" in found
    assert "password (554) as text" in found


@pytest.mark.parametrize("passphrase", [PASSPHRASE, "not-the-passphrase-3c9a", None],
                         ids=["right", "wrong", "unset"])
async def test_the_passphrase_reaches_the_key_at_start_and_never_a_message(
        e2e_material: E2EMaterial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, passphrase: str | None) -> None:
    """``fixproxy run`` (build_runtime) and ``fixproxy check`` (preflight) both read the
    passphrase; a wrong or missing one stops the session with a message that says which, and
    neither the passphrase tried nor the right one appears anywhere."""
    caplog.set_level(logging.DEBUG)
    if passphrase is None:
        monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    else:
        monkeypatch.setenv(PASSPHRASE_ENV, passphrase)
    session = e2e_material.session_config(
        name="enc", endpoint=ENDPOINTS["KalshiNR"], host="127.0.0.1", port=1,
        private_key=encrypted_copy(e2e_material, tmp_path),
        private_key_passphrase=PassphraseSource(env=PASSPHRASE_ENV))
    config = config_with(session)
    lines: list[str] = []
    ok = await preflight(config, online=False, echo=lines.append)

    if passphrase == PASSPHRASE:
        runtime = build_runtime(session, Metrics(CollectorRegistry()))
        assert runtime.config is session
        assert ok
        assert any(line.startswith("ok   session 'enc'") for line in lines)
        return
    expected = ("does not decrypt" if passphrase is not None
                else f"{PASSPHRASE_ENV} (private_key_passphrase_env) is not set")
    with pytest.raises(SigningError, match=re.escape(expected)):
        build_runtime(session, Metrics(CollectorRegistry()))
    assert not ok
    assert any(line.startswith("FAIL session 'enc'") and expected in line for line in lines)
    for secret in filter(None, (passphrase, PASSPHRASE)):
        assert secret not in "\n".join(lines)
        assert secret not in caplog.text
