"""The text reports an operator reads: ``fixproxy pin``'s chain report and ``fixproxy status``'s
table.

The reports are built from values, so these tests need no network: the chain reports hold real
trustme certificates described the way ``fetch_chain`` describes them (tests/net/test_tls.py
fetches them over a real handshake; tests/cli/test_cli.py runs the command).
"""

from __future__ import annotations

import tomllib

import trustme
from support.certs import (  # the *_fixture names: pytest fixtures, found by their names
    ca_der,
    ca_fixture,  # noqa: F401
    independent_pin,
    leaf_der,
    server_cert_fixture,  # noqa: F401
)

from fixproxy.cli.report import format_chain_report, format_status, leaf_pem
from fixproxy.net.pins import ChainReport, describe_certificate

# --- fixproxy pin -------------------------------------------------------------------------------


def paste_block(text: str) -> list[str]:
    """Parse the ``pins = [...]`` block at the end of the report as TOML."""
    block = text[text.rindex("pins = [\n"):]
    pins: list[str] = tomllib.loads(block)["pins"]
    return pins


def verified_report(ca: trustme.CA, server_cert: trustme.LeafCert) -> ChainReport:
    """What ``fetch_chain`` finds at a gateway that sends its leaf alone, signed by ``ca``."""
    leaf = describe_certificate(leaf_der(server_cert))
    return ChainReport(
        host="127.0.0.1", port=8228, server_name="localhost", presented=(leaf,),
        trust_store="/etc/fixproxy/ca.pem", verified=True, verify_error=None,
        verified_chain=(leaf, describe_certificate(ca_der(ca))), tls_version="TLSv1.3")


def unverified_report(ca: trustme.CA, server_cert: trustme.LeafCert) -> ChainReport:
    """What ``fetch_chain`` finds at a gateway that sends its leaf and an unknown CA."""
    return ChainReport(
        host="127.0.0.1", port=8228, server_name="localhost",
        presented=(describe_certificate(leaf_der(server_cert)),
                   describe_certificate(ca_der(ca))),
        trust_store="the system trust store", verified=False,
        verify_error="TLS handshake with 127.0.0.1:8228 (server_name localhost) failed: "
                     "certificate verify failed: self-signed certificate in certificate chain",
        verified_chain=(), tls_version="TLSv1.3")


def test_a_verified_chain_offers_the_leaf_pin_and_names_the_trust_anchor(
        ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    leaf = leaf_der(server_cert)
    text = format_chain_report(verified_report(ca, server_cert))
    leaf_info = describe_certificate(leaf)
    assert text.startswith("127.0.0.1:8228 (server_name localhost, TLSv1.3) presented "
                           "1 certificate(s):\n")
    assert leaf_info.subject in text
    assert leaf_info.issuer in text
    assert leaf_info.sha256_fingerprint in text
    assert f'pins = ["{independent_pin(leaf)}"]' in text
    assert f'pins = ["{independent_pin(ca_der(ca))}"]' in text  # the trust anchor, for a CA pin
    assert leaf_info.not_after.strftime("%Y-%m-%d") in text
    assert "verifies against /etc/fixproxy/ca.pem" in text
    assert 'verify = "ca+pin" can be used' in text
    assert paste_block(text) == [independent_pin(leaf)]


def test_an_unverifiable_chain_says_so_and_comments_out_the_issuer_pin(
        ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    report = unverified_report(ca, server_cert)
    text = format_chain_report(report)
    assert "does NOT verify against the system trust store" in text
    assert report.verify_error is not None and report.verify_error in text
    assert 'Only verify = "pin" can work' in text
    # The issuer's pin is offered commented out: it would accept anything that CA signs.
    assert f'# "{independent_pin(ca_der(ca))}"' in text
    assert paste_block(text) == [independent_pin(leaf_der(server_cert))]
    # Only the leaf's fingerprint is printed: it is what ``openssl x509 -fingerprint`` shows
    # for the certificate an operator saves.
    assert report.presented[0].sha256_fingerprint in text
    assert report.presented[1].sha256_fingerprint not in text


def test_an_issuer_sent_twice_is_offered_once(
        ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    leaf, issuer = (describe_certificate(leaf_der(server_cert)),
                    describe_certificate(ca_der(ca)))
    report = ChainReport(
        host="gw", port=1, server_name="localhost", presented=(leaf, issuer, issuer),
        trust_store="the system trust store", verified=True, verify_error=None,
        verified_chain=(leaf, issuer), tls_version="TLSv1.2")
    text = format_chain_report(report)
    assert text.count(f'# "{issuer.spki_pin}"') == 1
    assert text.count(f'pins = ["{issuer.spki_pin}"]') == 2  # each presented copy is listed
    assert "trust anchor (not sent by the server)" not in text


def test_leaf_pem_is_the_presented_leaf(ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    for report in (verified_report(ca, server_cert), unverified_report(ca, server_cert)):
        assert leaf_pem(report) == server_cert.cert_chain_pems[0].bytes()


# --- fixproxy status --------------------------------------------------------------------


def test_format_status_table() -> None:
    answer = {
        "version": "1.2.3", "now": "2025-01-09T12:00:00.000Z", "draining": False,
        "maintenance": {"active": False, "scheduled": True,
                        "window": {"start": "2025-01-16T08:00:00.000Z",
                                   "end": "2025-01-16T10:00:00.000Z"}},
        "sessions": [
            {"session": "orders", "state": "active", "since": "2025-01-09T11:54:57.000Z",
             "endpoint": "KalshiNR",
             "sequence_numbers": {"engine_to_gateway": 12, "gateway_to_engine": 34},
             "last_message": {"engine_to_gateway": {"age_seconds": 0.25},
                              "gateway_to_engine": {"age_seconds": 75.0}},
             "readiness": {"ready": True, "reason": "logged_on", "detail": ""},
             "last_error": None},
            {"session": "dropcopy", "state": "idle", "since": "2025-01-08T09:00:00.000Z",
             "endpoint": "KalshiDC", "sequence_numbers": {}, "last_message": {},
             "readiness": {"ready": False, "reason": "pin_mismatch",
                           "detail": "presented sha256/x"},
             "last_error": {"text": "refused engine connection #3: " + "x" * 100,
                            "at": "2025-01-09T11:00:00.000Z"}},
        ],
    }
    lines = format_status(answer).splitlines()
    assert lines[0] == ("fixproxy 1.2.3 at 2025-01-09T12:00:00.000Z; next maintenance window "
                        "2025-01-16T08:00:00.000Z")
    orders, dropcopy = lines[2], lines[3]
    assert orders.split() == ["orders", "active", "11:54:57Z", "(5m03s)", "KalshiNR", "12/34",
                              "0.2s/1m15s", "yes", "(logged_on)", "-"]
    assert "2025-01-08 09:00Z (1d03h)" in dropcopy
    assert "NO (pin_mismatch)" in dropcopy
    error = dropcopy.split("(pin_mismatch)")[1].strip()
    assert len(error) == 60 and error.endswith("...")
    assert lines[4] == "dropcopy: not ready (pin_mismatch): presented sha256/x"
    # Every row lines its columns up under the header.
    assert lines[2].index("KalshiNR") == lines[1].index("ENDPOINT")
    assert lines[3].index("KalshiDC") == lines[1].index("ENDPOINT")
