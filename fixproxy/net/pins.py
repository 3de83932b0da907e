"""Gateway trust: the pins, and which certificates of a handshake they are matched against.

Theory of operation
-------------------
Kalshi's FIX gateways speak TLS 1.2 or newer only, behind AWS Network Load Balancers, and Kalshi
tells initiators to pin the gateway's certificate. A session therefore trusts the gateway in one
of three ways (``TLSPolicy.verify``):

``ca+pin`` (the default when pins are configured)
    The chain must verify against ``ca_file`` or the system store, the certificate must name
    ``server_name``, *and* a configured pin must match a certificate of the verified chain (or
    the leaf must equal ``pinned_cert``). A CA that issues a certificate for the gateway's name
    to someone else is still refused.
``ca``
    Ordinary web PKI: chain plus hostname.
``pin``
    For private gateways (PrivateLink, VPC peering) whose certificates no public CA signs: no
    chain or hostname verification; the pins are the only trust.

Pins are ``sha256/<base64>`` hashes of a certificate's DER SubjectPublicKeyInfo, the form that
survives a reissue with the same key; ``pinned_cert`` is the exact leaf Kalshi's connectivity
page tells users to save with ``openssl s_client``. Any one configured pin, or the pinned leaf,
is enough, so an operator can add the next certificate's pin before a rotation.

A pin only means something on a certificate the handshake has tied to the server. The peer
proves possession of the leaf's key, and a chain verification ties the leaf to each issuer above
it. Certificates a server merely *sends* prove nothing: anybody can append Kalshi's real leaf
to a chain of their own. So pins are matched against the verified chain (which also holds the
local trust anchor, allowing a root pin) when verification is on, and in ``pin`` mode against
the leaf and those presented issuers whose signatures link up to the leaf, checked here with
cryptography. Matching the union of verified and unverified chains was rejected for that
reason.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from fixproxy.config.model import TLSPolicy, VerifyMode
from fixproxy.config.pins import PIN_PREFIX, canonical_pin, pin_conflict
from fixproxy.errors import ConfigError, PinMismatchError, TLSHandshakeError

MAX_LINKED_CHAIN: Final = 8
"""Presented certificates considered when ``pin`` mode links issuers to the leaf. Real chains
have two to four; the cap bounds the signature checks an unauthenticated peer can cause."""


@dataclass(frozen=True, slots=True)
class GatewayTrust:
    """What a session trusts, loaded once from its :class:`TLSPolicy`.

    Built at startup so that the per-connection path does no file I/O.
    """

    server_name: str
    verify: VerifyMode
    pins: frozenset[str]
    pinned_cert: Path | None
    pinned_leaf_der: bytes | None

    @classmethod
    def from_policy(cls, policy: TLSPolicy) -> GatewayTrust:
        """Validate the pins and read ``pinned_cert``.

        Raises:
            ConfigError: a malformed pin, an unreadable or unparsable ``pinned_cert``, or a
                verify mode that contradicts the pins (``pin`` or ``ca+pin`` without any,
                ``ca`` with some, which it would silently ignore).
        """
        pins = frozenset(canonical_pin(pin) for pin in policy.pins)
        leaf: bytes | None = None
        if policy.pinned_cert is not None:
            leaf = _read_pinned_leaf(policy.pinned_cert)
        # The loader has refused these already; a policy built in code (the demo, the
        # benchmark, tests) reaches here without it.
        conflict = pin_conflict(policy.verify, pinned=bool(pins) or leaf is not None)
        if conflict == "needs pins":
            raise ConfigError(f"verify = {policy.verify!r} needs pins or pinned_cert",
                              key="verify")
        if conflict == "ignores pins":
            raise ConfigError("pins or pinned_cert are set but verify = 'ca' would ignore "
                              "them; use verify = 'ca+pin'", key="verify")
        return cls(server_name=policy.server_name, verify=policy.verify, pins=pins,
                   pinned_cert=policy.pinned_cert, pinned_leaf_der=leaf)


@dataclass(frozen=True, slots=True)
class PeerChain:
    """The certificates of one handshake, DER, leaf first."""

    presented: tuple[bytes, ...]
    """What the server sent, in its order."""
    verified: tuple[bytes, ...] | None
    """The chain OpenSSL built and verified, up to the local trust anchor; None when
    verification is off."""


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """One certificate, described for a person and for the configuration file."""

    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    spki_pin: str
    sha256_fingerprint: str
    """Hex pairs separated by colons, upper case, as ``openssl x509 -fingerprint`` prints."""
    der: bytes
    pem: bytes


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What ``fixproxy pin HOST:PORT`` found."""

    host: str
    port: int
    server_name: str
    presented: tuple[CertificateInfo, ...]
    """The chain as the server sent it, leaf first."""
    trust_store: str
    """``ca_file`` path, or ``"the system trust store"``."""
    verified: bool
    verify_error: str | None
    verified_chain: tuple[CertificateInfo, ...]
    """The verified chain including the local trust anchor; empty when not verified."""
    tls_version: str


# --- certificates and pins (pure) ---------------------------------------------------------------


def spki_pin(cert_der: bytes) -> str:
    """Return ``sha256/<base64>`` of the certificate's DER SubjectPublicKeyInfo.

    Raises:
        TLSHandshakeError: the bytes are not a DER certificate.
    """
    return _pin_of(load_certificate(cert_der))


def load_certificate(der: bytes) -> x509.Certificate:
    """Parse a DER certificate a gateway presented.

    Raises:
        TLSHandshakeError: the bytes are not a DER certificate.
    """
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise TLSHandshakeError(f"cannot parse a certificate: {exc}") from exc


def describe_certificate(der: bytes) -> CertificateInfo:
    """Describe a DER certificate: names, validity, pin, fingerprint and PEM.

    Raises:
        TLSHandshakeError: the bytes are not a DER certificate.
    """
    cert = load_certificate(der)
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        spki_pin=_pin_of(cert),
        sha256_fingerprint=_fingerprint(der),
        der=der,
        pem=cert.public_bytes(serialization.Encoding.PEM),
    )


def check_chain(trust: GatewayTrust, chain: PeerChain, *, peer: str) -> tuple[str, ...]:
    """Apply the pins to one handshake's chain.

    Only certificates tied to the handshake count (module docstring): the verified chain when
    verification is on; in ``pin`` mode the leaf and the presented issuers whose signatures
    link up to it.

    Args:
        peer: ``host:port`` for the error message.

    Returns:
        The pins of the certificates that count, leaf first.

    Raises:
        PinMismatchError: no configured pin matched and the leaf is not ``pinned_cert``.
        TLSHandshakeError: no certificate was presented, or one cannot be parsed.
    """
    if not chain.presented:
        raise TLSHandshakeError(f"{peer}: the gateway presented no certificate")
    leaf = chain.presented[0]
    if trust.verify == "pin":
        counted = _linked_issuers(chain.presented)
    else:
        counted = chain.verified if chain.verified else (leaf,)
    counted_pins = tuple(spki_pin(der) for der in counted)
    if trust.verify == "ca":
        return counted_pins
    if trust.pins.intersection(counted_pins):
        return counted_pins
    if trust.pinned_leaf_der is not None and leaf == trust.pinned_leaf_der:
        return counted_pins
    raise _mismatch(trust, chain, counted_pins, peer=peer)


def _linked_issuers(presented: Sequence[bytes]) -> tuple[bytes, ...]:
    """The leaf, then each presented CA certificate whose signature links it to the leaf.

    Servers may send issuers in any order (TLS 1.3 allows it), so each step searches the
    whole remaining set. Dates and names beyond the issuer link are not checked: in ``pin``
    mode the pins are the trust decision, and the leaf's key is proven by the handshake.
    """
    certs = [load_certificate(der) for der in presented[:MAX_LINKED_CHAIN]]
    linked = [0]
    remaining = set(range(1, len(certs)))
    while remaining:
        child = certs[linked[-1]]
        parent = next((i for i in sorted(remaining) if _issued(child, certs[i])), None)
        if parent is None:
            break
        linked.append(parent)
        remaining.discard(parent)
    return tuple(presented[i] for i in linked)


def _issued(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer`` is a CA certificate whose key signed ``child``."""
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:  # a leaf's key must not be able to vouch for another leaf
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _mismatch(trust: GatewayTrust, chain: PeerChain, counted_pins: tuple[str, ...], *,
              peer: str) -> PinMismatchError:
    counted = set(counted_pins)
    described = []
    for der in chain.presented:
        cert = load_certificate(der)
        pin = _pin_of(cert)
        note = "" if pin in counted else ", not linked to the leaf: does not count"
        described.append(f"{pin} ({cert.subject.rfc4514_string()}{note})")
    for der in chain.verified or ():
        if der not in chain.presented:
            cert = load_certificate(der)
            described.append(f"{_pin_of(cert)} (trust anchor {cert.subject.rfc4514_string()})")
    expected = tuple(sorted(trust.pins))
    wanted = [*expected]
    if trust.pinned_leaf_der is not None:
        wanted.append(f"the leaf in {trust.pinned_cert} "
                      f"(sha256 fingerprint {_fingerprint(trust.pinned_leaf_der)})")
    message = (f"{peer}: the gateway's certificates match none of the configured pins; "
               f"presented: {'; '.join(described)}; leaf sha256 fingerprint "
               f"{_fingerprint(chain.presented[0])}; expected one of: {'; '.join(wanted)}")
    presented = tuple(dict.fromkeys(
        [*(spki_pin(der) for der in chain.presented), *counted_pins]))
    return PinMismatchError(message, presented=presented, expected=expected)


def _read_pinned_leaf(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read pinned_cert {path}: {exc.strerror or exc}",
                          key="pinned_cert") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"pinned_cert {path} holds no PEM certificate: {exc}",
                          key="pinned_cert") from exc
    # The first certificate is the leaf, as ``openssl s_client ... | openssl x509`` and
    # ``fixproxy pin --save`` write it.
    return certs[0].public_bytes(serialization.Encoding.DER)


def _pin_of(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return PIN_PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).digest().hex(":").upper()
