"""Gateway trust without sockets: which certificates count for a pin, the pin of a
certificate, and the trust a session builds from its TLS policy.

Certificates come from trustme, from the openssl command line (a known answer), or are built
here with cryptography for chains trustme cannot make.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support.certs import (  # the *_fixture names: pytest fixtures, found by their names
    KAT_FINGERPRINT,
    KAT_PEM,
    KAT_PIN,
    UNUSED_PIN,
    build_cert,
    ca_fixture,  # noqa: F401
    der_of,
    independent_pin,
    leaf_der,
    policy,
    server_cert_fixture,  # noqa: F401
)

from fixproxy.config.model import VerifyMode
from fixproxy.errors import ConfigError, PinMismatchError, TLSHandshakeError
from fixproxy.net.pins import (
    MAX_LINKED_CHAIN,
    GatewayTrust,
    PeerChain,
    check_chain,
    describe_certificate,
    load_certificate,
    spki_pin,
)


def trust(verify: VerifyMode, *pins: str, pinned: bytes | None = None) -> GatewayTrust:
    return GatewayTrust(server_name="gateway.test", verify=verify, pins=frozenset(pins),
                        pinned_cert=Path("pinned.pem") if pinned else None,
                        pinned_leaf_der=pinned)


# --- the pin decision without sockets -----------------------------------------------------------


def test_pin_mode_accepts_a_ca_pin_only_through_a_signature_link() -> None:
    root = build_cert("root", ca=True)
    intermediate = build_cert("intermediate", ca=True, issuer=root)
    leaf = build_cert("gateway.test", ca=False, issuer=intermediate)
    # Issuers out of order, as TLS 1.3 allows.
    chain = PeerChain(presented=(der_of(leaf), der_of(root), der_of(intermediate)), verified=None)
    pins = check_chain(trust("pin", spki_pin(der_of(root))), chain, peer="gw:1")
    assert pins == tuple(independent_pin(der_of(c)) for c in (leaf, intermediate, root))

    stranger = build_cert("gateway.test", ca=False, issuer=build_cert("evil", ca=True))
    forged = PeerChain(presented=(der_of(stranger), der_of(intermediate), der_of(root)),
                       verified=None)
    with pytest.raises(PinMismatchError) as caught:
        check_chain(trust("pin", spki_pin(der_of(root))), forged, peer="gw:1")
    assert "does not count" in str(caught.value)
    assert spki_pin(der_of(root)) in caught.value.presented


def test_pin_mode_refuses_a_leaf_that_signs_another_leaf() -> None:
    genuine = build_cert("gateway.test", ca=False)
    forged = build_cert("gateway.test", ca=False, issuer=genuine)
    chain = PeerChain(presented=(der_of(forged), der_of(genuine)), verified=None)
    with pytest.raises(PinMismatchError):
        check_chain(trust("pin", spki_pin(der_of(genuine))), chain, peer="gw:1")


def test_verified_modes_count_only_the_verified_chain() -> None:
    anchor = build_cert("anchor", ca=True)
    leaf = build_cert("gateway.test", ca=False, issuer=anchor)
    extra = build_cert("someone else", ca=False)
    chain = PeerChain(presented=(der_of(leaf), der_of(extra)),
                      verified=(der_of(leaf), der_of(anchor)))
    expected = (spki_pin(der_of(leaf)), spki_pin(der_of(anchor)))
    assert check_chain(trust("ca+pin", spki_pin(der_of(anchor))), chain, peer="gw:1") == expected
    assert check_chain(trust("ca"), chain, peer="gw:1") == expected
    with pytest.raises(PinMismatchError):
        check_chain(trust("ca+pin", spki_pin(der_of(extra))), chain, peer="gw:1")


def test_pinned_cert_compares_der_not_key() -> None:
    issuer = build_cert("ca", ca=True)
    leaf = build_cert("gateway.test", ca=False, issuer=issuer)
    reissued = build_cert("gateway.test", ca=False, issuer=issuer, key=leaf[1])
    assert spki_pin(der_of(leaf)) == spki_pin(der_of(reissued))
    chain = PeerChain(presented=(der_of(reissued),), verified=(der_of(reissued),))
    with pytest.raises(PinMismatchError) as caught:
        check_chain(trust("ca+pin", pinned=der_of(leaf)), chain, peer="gw:1")
    assert caught.value.expected == ()
    same = PeerChain(presented=(der_of(leaf),), verified=(der_of(leaf),))
    assert check_chain(trust("ca+pin", pinned=der_of(leaf)), same, peer="gw:1") == (
        spki_pin(der_of(leaf)),)


def test_pin_mode_links_only_the_first_presented_certificates() -> None:
    root = build_cert("root", ca=True)
    leaf = build_cert("gateway.test", ca=False, issuer=root)
    padding = [der_of(build_cert(f"filler {n}", ca=True)) for n in range(MAX_LINKED_CHAIN)]
    near = PeerChain(presented=(der_of(leaf), der_of(root), *padding), verified=None)
    assert spki_pin(der_of(root)) in check_chain(trust("pin", spki_pin(der_of(root))), near,
                                                 peer="gw:1")
    far = PeerChain(presented=(der_of(leaf), *padding, der_of(root)), verified=None)
    with pytest.raises(PinMismatchError):
        check_chain(trust("pin", spki_pin(der_of(root))), far, peer="gw:1")


def test_no_certificate_is_a_tls_error() -> None:
    with pytest.raises(TLSHandshakeError):
        check_chain(trust("pin", UNUSED_PIN), PeerChain(presented=(), verified=None),
                    peer="gw:1")


# --- pins and certificate descriptions ----------------------------------------------------------


def test_spki_pin_known_answer() -> None:
    der = ssl.PEM_cert_to_DER_cert(KAT_PEM.decode())
    assert spki_pin(der) == KAT_PIN
    info = describe_certificate(der)
    assert info.spki_pin == KAT_PIN
    assert info.sha256_fingerprint == KAT_FINGERPRINT
    assert info.subject == "O=fixproxy,CN=kat.fixproxy.test"
    assert info.issuer == info.subject
    assert info.pem == KAT_PEM
    assert info.der == der


def test_spki_pin_matches_the_private_key(server_cert: trustme.LeafCert) -> None:
    key = serialization.load_pem_private_key(server_cert.private_key_pem.bytes(), None)
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert spki_pin(leaf_der(server_cert)) == expected


def test_describe_certificate_reads_validity(server_cert: trustme.LeafCert) -> None:
    der = leaf_der(server_cert)
    cert = x509.load_der_x509_certificate(der)
    info = describe_certificate(der)
    assert (info.not_before, info.not_after) == (cert.not_valid_before_utc,
                                                 cert.not_valid_after_utc)
    assert info.not_after.tzinfo is not None
    assert info.sha256_fingerprint == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def test_garbage_is_not_a_certificate() -> None:
    with pytest.raises(TLSHandshakeError):
        spki_pin(b"\x30\x03\x02\x01\x00")
    with pytest.raises(TLSHandshakeError, match="cannot parse a certificate"):
        load_certificate(b"\x30\x03\x02\x01\x00")


# --- trust from a TLS policy ---------------------------------------------------------------------


@pytest.mark.parametrize(("pins", "verify", "message"), [
    (("sha1/" + KAT_PIN[7:],), "ca+pin", "must start with"),
    (("sha256/not*base64",), "ca+pin", "not valid base64"),
    (("sha256/" + "é" * 43 + "=",), "ca+pin", "not valid base64"),
    (("sha256/" + base64.b64encode(b"short").decode(),), "ca+pin", "32"),
    ((), "pin", "needs pins"),
    ((), "ca+pin", "needs pins"),
    ((KAT_PIN,), "ca", "use verify = 'ca\\+pin'"),
])
def test_trust_refuses_contradictory_or_malformed_pins(
        pins: tuple[str, ...], verify: VerifyMode, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GatewayTrust.from_policy(policy(verify, pins=pins))


def test_trust_reads_the_pinned_cert_once(tmp_path: Path) -> None:
    pinned = tmp_path / "leaf.pem"
    pinned.write_bytes(KAT_PEM)
    built = GatewayTrust.from_policy(policy("pin", pins=(KAT_PIN,), pinned_cert=pinned))
    pinned.unlink()  # nothing is read again after startup
    assert built.pinned_leaf_der == ssl.PEM_cert_to_DER_cert(KAT_PEM.decode())
    assert built.pins == frozenset({KAT_PIN})

    with pytest.raises(ConfigError, match="cannot read pinned_cert"):
        GatewayTrust.from_policy(policy("pin", pinned_cert=pinned))
    pinned.write_text("no certificate here\n")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        GatewayTrust.from_policy(policy("pin", pinned_cert=pinned))
