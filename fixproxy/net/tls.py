"""The TLS upstream: one client context per session, the handshake, and the pin checks.

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

Python 3.11's ``ssl`` does not publish the peer's chain; the C object beneath every
``ssl.SSLObject`` has ``get_verified_chain()`` and ``get_unverified_chain()`` (public from 3.13),
so :func:`_peer_chain` reaches them through trio's ``SSLStream``.

Order of events: TCP connect, TLS handshake (explicitly: trio's ``SSLStream`` would otherwise
start it lazily on the first write, which would be the Logon), then the pin check, and only
then is the stream handed to the relay, so no FIX byte reaches an unchecked peer. The connect
and handshake together are bounded by ``connect_timeout``; the configuration files are read
once when a session starts (:class:`GatewayTrust`), never per connection.

close_notify: the stream is opened with ``https_compatible=True``, so a TCP close without a TLS
close_notify is a plain end of stream and closing sends none. Gateways behind an AWS NLB can
drop TCP right after a Logout, and a strict stream would turn the normal end of every session
into an error. Truncation is still detected, in FIX terms: a session ends with a Logout (35=5),
and a cut inside a message fails the framer's BodyLength and CheckSum checks.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import socket
import ssl
from _ssl import ENCODING_DER  # the C module's constant; ``ssl`` does not re-export it
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from fixproxy.config.model import TLSPolicy, VerifyMode
from fixproxy.errors import (
    ConfigError,
    ConnectError,
    ConnectTimeout,
    PinMismatchError,
    TLSHandshakeError,
)
from fixproxy.net.streams import NonBlockingSocketStream

PIN_PREFIX: Final = "sha256/"
MIN_TLS_VERSION: Final = ssl.TLSVersion.TLSv1_2
"""Kalshi's connectivity page: TLS 1.2 or higher."""
TLS12_CIPHERS: Final = "@SECLEVEL=2:ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
"""The TLS 1.2 cipher suites offered: forward-secret key exchange (ECDHE) with an AEAD cipher
(AES-GCM, ChaCha20-Poly1305) only. Python's default list still has CBC suites with SHA-1 or
SHA-2 MACs and finite-field DHE; AWS load balancers' TLS policies all offer ECDHE with AES-GCM,
so nothing a Kalshi gateway needs is lost. Security level 2 also refuses RSA keys under 2048
bits. TLS 1.3 suites are separate in OpenSSL and all AEAD; its defaults stand."""
_SHA256_BYTES: Final = 32
MAX_LINKED_CHAIN: Final = 8
"""Presented certificates considered when ``pin`` mode links issuers to the leaf. Real chains
have two to four; the cap bounds the signature checks an unauthenticated peer can cause."""
_HANDSHAKE_HINTS: Final = {
    "WRONG_VERSION_NUMBER": "the port does not seem to speak TLS",
    "UNSUPPORTED_PROTOCOL": "no common TLS version; fixproxy requires TLS 1.2 or newer",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no common TLS version; fixproxy requires TLS 1.2 or newer",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "no common cipher suite or signature algorithm",
    "NO_SHARED_CIPHER": "no common cipher suite",
}



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
        pins = frozenset(_canonical_pin(pin) for pin in policy.pins)
        leaf: bytes | None = None
        if policy.pinned_cert is not None:
            leaf = _read_pinned_leaf(policy.pinned_cert)
        has_pins = bool(pins) or leaf is not None
        if policy.verify in ("pin", "ca+pin") and not has_pins:
            raise ConfigError(f"verify = {policy.verify!r} needs pins or pinned_cert",
                              key="verify")
        if policy.verify == "ca" and has_pins:
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
class HandshakeInfo:
    """What an operator and the metrics want to know about one gateway connection."""

    tls_version: str
    cipher: str
    handshake_seconds: float
    """TCP connect plus TLS handshake."""
    connect_seconds: float
    """The TCP connect alone."""
    leaf_subject: str
    """RFC 4514."""
    leaf_not_after: datetime
    """UTC, timezone-aware."""
    presented_pins: tuple[str, ...]
    """The pins of the certificates that count for pinning (see :func:`check_chain`)."""


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
    return _pin_of(_load_der(cert_der))


def describe_certificate(der: bytes) -> CertificateInfo:
    """Describe a DER certificate: names, validity, pin, fingerprint and PEM.

    Raises:
        TLSHandshakeError: the bytes are not a DER certificate.
    """
    cert = _load_der(der)
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


# --- connecting -----------------------------------------------------------------------------------


def make_client_context(policy: TLSPolicy) -> ssl.SSLContext:
    """Build the client context for one session: TLS 1.2+, ECDHE with AEAD ciphers only
    (:data:`TLS12_CIPHERS`), no renegotiation, no compression.

    ``ca`` and ``ca+pin`` verify the chain against ``ca_file`` (or the system store when unset)
    and check the hostname; ``pin`` verifies neither, leaving trust to the pins.

    Raises:
        ConfigError: ``ca_file`` cannot be read or holds no certificate.
    """
    cafile = None if policy.verify == "pin" else policy.ca_file
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except OSError as exc:  # ssl.SSLError is an OSError: a file with no certificate in it
        raise ConfigError(f"cannot load ca_file {cafile}: {_os_reason(exc)}",
                          key="ca_file") from exc
    context.minimum_version = MIN_TLS_VERSION
    try:
        context.set_ciphers(TLS12_CIPHERS)
    except ssl.SSLError as exc:  # an OpenSSL built without any of them
        raise ConfigError(f"this OpenSSL ({ssl.OPENSSL_VERSION}) offers none of the TLS 1.2 "
                          f"cipher suites fixproxy allows ({TLS12_CIPHERS})") from exc
    # Renegotiation and compression only add attack surface to a long-lived FIX session
    # (renegotiation: CVE-2009-3555-style prefix injection and CPU exhaustion; compression:
    # CRIME). OP_NO_RENEGOTIATION makes OpenSSL answer a server's HelloRequest with a
    # no_renegotiation alert instead of a new handshake.
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    if policy.verify == "pin":
        context.check_hostname = False  # must precede CERT_NONE, which ssl refuses otherwise
        context.verify_mode = ssl.CERT_NONE
    else:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
    return context


async def open_gateway_stream(host: str, port: int, trust: GatewayTrust,
                              context: ssl.SSLContext, *, connect_timeout: float
                              ) -> tuple[TLSSocketStream, HandshakeInfo]:
    """Connect to a gateway, finish the TLS handshake and check the pins.

    Nothing is written on the returned stream yet; the caller owns it and must close it.

    Args:
        context: from :func:`make_client_context` for the same policy as ``trust``.
        connect_timeout: seconds for the TCP connect and TLS handshake together.

    Raises:
        ConnectError: the TCP connect failed (refused, unreachable, unknown host).
        ConnectTimeout: no TLS session within ``connect_timeout``.
        TLSHandshakeError: the handshake failed (chain, hostname, expiry, protocol version).
        PinMismatchError: the chain matched no pin and the leaf is not ``pinned_cert``.
        ConfigError: ``context`` does not verify what ``trust`` relies on.
    """
    if trust.verify != "pin" and not (context.verify_mode == ssl.CERT_REQUIRED
                                      and context.check_hostname):
        # The verified chain of an unverified handshake is meaningless: refuse to pin on it.
        raise ConfigError(f"verify = {trust.verify!r} needs a context that verifies the chain "
                          f"and hostname; build it with make_client_context", key="verify")
    stream, connect_seconds, handshake_seconds = await _connect_tls(
        host, port, trust.server_name, context, connect_timeout=connect_timeout)
    try:
        chain = _peer_chain(stream, verified=trust.verify != "pin")
        pins = check_chain(trust, chain, peer=f"{host}:{port}")
        leaf = _load_der(chain.presented[0])
        info = HandshakeInfo(
            tls_version=stream.version() or "",
            cipher=_cipher_name(stream),
            handshake_seconds=handshake_seconds,
            connect_seconds=connect_seconds,
            leaf_subject=leaf.subject.rfc4514_string(),
            leaf_not_after=leaf.not_valid_after_utc,
            presented_pins=pins,
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, info


async def fetch_chain(
        host: str, port: int, server_name: str | None = None, *,
        timeout: float,  # noqa: ASYNC109  each of the two handshakes gets its own deadline
        ca_file: Path | None = None) -> ChainReport:
    """Fetch the certificate chain a gateway presents, for ``fixproxy pin``.

    The first handshake verifies nothing, so whatever the server sends is shown. A second,
    verifying handshake (``ca_file`` or the system store, plus the hostname) says whether the
    chain would pass ``ca`` or ``ca+pin``, using exactly the checks a session uses.

    Args:
        server_name: SNI and the name to verify; defaults to ``host``.
        timeout: seconds for each of the two connect-and-handshake rounds.

    Raises:
        ConnectError, ConnectTimeout, TLSHandshakeError: the first, unverified, handshake failed.
    """
    name = server_name or host
    probe = TLSPolicy(server_name=name, verify="pin", ca_file=None, pins=(), pinned_cert=None)
    stream, _, _ = await _connect_tls(host, port, name, make_client_context(probe),
                                      connect_timeout=timeout)
    try:
        presented = _peer_chain(stream, verified=False).presented
        version = stream.version() or ""
    finally:
        await trio.aclose_forcefully(stream)
    if not presented:
        raise TLSHandshakeError(f"{host}:{port}: the gateway presented no certificate")
    infos = tuple(describe_certificate(der) for der in presented)

    checked = replace(probe, verify="ca", ca_file=ca_file)
    verified_chain: tuple[CertificateInfo, ...] = ()
    verify_error: str | None = None
    try:
        stream, _, _ = await _connect_tls(host, port, name, make_client_context(checked),
                                          connect_timeout=timeout)
    except (ConnectError, TLSHandshakeError) as exc:
        verify_error = str(exc)
    else:
        try:
            chain = _peer_chain(stream, verified=True)
        finally:
            await trio.aclose_forcefully(stream)
        verified_chain = tuple(describe_certificate(der) for der in chain.verified or ())
    return ChainReport(
        host=host, port=port, server_name=name, presented=infos,
        trust_store=str(ca_file) if ca_file is not None else "the system trust store",
        verified=verify_error is None, verify_error=verify_error,
        verified_chain=verified_chain, tls_version=version)


def format_chain_report(report: ChainReport) -> str:
    """Render a :class:`ChainReport` for a terminal, with a TOML ``pins`` block to paste."""
    lines = [f"{report.host}:{report.port} (server_name {report.server_name}, "
             f"{report.tls_version}) presented {len(report.presented)} certificate(s):", ""]
    for index, cert in enumerate(report.presented):
        role = "leaf" if index == 0 else "issuer"
        lines += [
            f"[{index}] {role}",
            f"    subject:   {cert.subject}",
            f"    issuer:    {cert.issuer}",
            f"    not after: {_utc_text(cert.not_after)}",
        ]
        if index == 0:
            lines.append(f"    sha256 fingerprint: {cert.sha256_fingerprint}")
        lines += [f'    pins = ["{cert.spki_pin}"]', ""]
    if report.verified:
        lines.append(f"The chain verifies against {report.trust_store} for "
                     f"{report.server_name}: verify = \"ca+pin\" can be used.")
        extra = report.verified_chain[len(report.presented):]
        for cert in extra:
            lines.append(f"    trust anchor (not sent by the server): {cert.subject}")
            lines.append(f'    pins = ["{cert.spki_pin}"]')
    else:
        lines.append(f"The chain does NOT verify against {report.trust_store} for "
                     f"{report.server_name}: {report.verify_error}")
        lines.append("Only verify = \"pin\" can work; check the certificate out of band "
                     "before trusting it.")
    lines += ["", "Paste into the session (or [gateway]) table:", "pins = ["]
    leaf = report.presented[0]
    lines.append(f'    "{leaf.spki_pin}",  # leaf {leaf.subject}, until '
                 f"{_utc_text(leaf.not_after)}")
    issuers = [*report.presented[1:], *report.verified_chain[len(report.presented):]]
    if issuers:
        lines.append("    # An issuer pin accepts any certificate that CA signs: use one only "
                     "with verify = \"ca+pin\".")
    seen = {leaf.spki_pin}
    for cert in issuers:
        if cert.spki_pin not in seen:
            seen.add(cert.spki_pin)
            lines.append(f'    # "{cert.spki_pin}",  # {cert.subject}')
    lines.append("]")
    return "\n".join(lines) + "\n"


def leaf_pem(report: ChainReport) -> bytes:
    """The presented leaf as PEM, the file ``pinned_cert`` expects (``--save FILE``)."""
    return report.presented[0].pem


class TLSSocketStream(NonBlockingSocketStream):
    """A TLS connection on a non-blocking stdlib ``ssl.SSLSocket`` (see fixproxy.streams).

    Semantics match ``SSLStream(https_compatible=True)``: a TCP close without close_notify is
    an ordinary end of stream, and closing sends none.
    """

    __slots__ = ("_tls",)

    SEND_WOULD_BLOCK = (ssl.SSLWantWriteError,)
    SEND_NEEDS_READ = (ssl.SSLWantReadError,)
    RECEIVE_WOULD_BLOCK = (ssl.SSLWantReadError,)
    RECEIVE_NEEDS_WRITE = (ssl.SSLWantWriteError,)
    END_OF_STREAM = (ssl.SSLZeroReturnError, ssl.SSLEOFError)

    def __init__(self, sock: ssl.SSLSocket) -> None:
        super().__init__(sock)
        self._tls = sock

    @property
    def ssl_socket(self) -> ssl.SSLSocket:
        return self._tls

    def version(self) -> str | None:
        return self._tls.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._tls.cipher()


# --- internals ------------------------------------------------------------------------------------


async def _connect_tls(host: str, port: int, server_name: str, context: ssl.SSLContext, *,
                       connect_timeout: float) -> tuple[TLSSocketStream, float, float]:
    """TCP connect and TLS handshake within ``connect_timeout``; close the stream on failure.

    Returns:
        The stream, the TCP connect seconds, and the connect plus handshake seconds.
    """
    peer = f"{host}:{port}"
    phase: Literal["TCP connect", "TLS handshake"] = "TCP connect"
    started = trio.current_time()
    with trio.move_on_after(connect_timeout):
        try:
            tcp = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {peer}: {_os_reason(exc)}") from exc
        connected = trio.current_time()
        phase = "TLS handshake"
        # FIX is small, latency-bound messages: no Nagle delay. trio's SocketStream sets this
        # too; saying it here keeps the requirement visible. Failure only costs latency.
        with contextlib.suppress(OSError):
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        plain = socket.socket(fileno=tcp.socket.detach())
        plain.setblocking(False)
        try:
            tls = context.wrap_socket(plain, server_hostname=server_name,
                                      do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            plain.close()
            raise TLSHandshakeError(f"TLS setup for {peer} failed: {exc}") from exc
        stream = TLSSocketStream(tls)
        try:
            await _handshake(tls)
        except (OSError, ValueError) as exc:
            await trio.aclose_forcefully(stream)
            raise TLSHandshakeError(
                f"TLS handshake with {peer} (server_name {server_name}) failed: "
                f"{_describe_tls_failure(exc)}") from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream, connected - started, trio.current_time() - started
    # Leaving the block without returning or raising means the deadline cancelled it.
    raise ConnectTimeout(f"no TLS session with {peer} within {connect_timeout:g} s "
                         f"(stalled in the {phase})")


def _peer_chain(stream: TLSSocketStream, *, verified: bool) -> PeerChain:
    """Read the presented and (when ``verified``) the verified chain of a finished handshake."""
    ssl_object = stream.ssl_socket
    return PeerChain(
        presented=_chain_der(ssl_object, "get_unverified_chain"),
        verified=_chain_der(ssl_object, "get_verified_chain") if verified else None,
    )


def _chain_der(ssl_object: ssl.SSLObject | ssl.SSLSocket,
               method: Literal["get_unverified_chain", "get_verified_chain"]
               ) -> tuple[bytes, ...]:
    public = getattr(ssl_object, method, None)
    if public is not None:  # Python 3.13+: public, returns DER bytes
        certs: Any = public()
    else:
        # Python 3.11 and 3.12 expose the chain only on the C-level _ssl._SSLSocket that
        # SSLSocket and SSLObject wrap; it returns _ssl.Certificate objects.
        inner = ssl_object._sslobj  # type: ignore[union-attr]  # private, see above
        certs = getattr(inner, method)()
    return tuple(c if isinstance(c, bytes) else bytes(c.public_bytes(ENCODING_DER))
                 for c in certs or ())


def _linked_issuers(presented: Sequence[bytes]) -> tuple[bytes, ...]:
    """The leaf, then each presented CA certificate whose signature links it to the leaf.

    Servers may send issuers in any order (TLS 1.3 allows it), so each step searches the
    whole remaining set. Dates and names beyond the issuer link are not checked: in ``pin``
    mode the pins are the trust decision, and the leaf's key is proven by the handshake.
    """
    certs = [_load_der(der) for der in presented[:MAX_LINKED_CHAIN]]
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
        cert = _load_der(der)
        pin = _pin_of(cert)
        note = "" if pin in counted else ", not linked to the leaf: does not count"
        described.append(f"{pin} ({cert.subject.rfc4514_string()}{note})")
    for der in chain.verified or ():
        if der not in chain.presented:
            cert = _load_der(der)
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


def _canonical_pin(pin: str) -> str:
    if not pin.startswith(PIN_PREFIX):
        raise ConfigError(f"pin {pin!r} must start with {PIN_PREFIX!r}", key="pins")
    try:
        digest = base64.b64decode(pin[len(PIN_PREFIX):], validate=True)
    except binascii.Error as exc:
        raise ConfigError(f"pin {pin!r} is not valid base64", key="pins") from exc
    if len(digest) != _SHA256_BYTES:
        raise ConfigError(f"pin {pin!r} holds {len(digest)} bytes, a SHA-256 has 32",
                          key="pins")
    return PIN_PREFIX + base64.b64encode(digest).decode("ascii")


def _read_pinned_leaf(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read pinned_cert {path}: {_os_reason(exc)}",
                          key="pinned_cert") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"pinned_cert {path} holds no PEM certificate: {exc}",
                          key="pinned_cert") from exc
    # The first certificate is the leaf, as ``openssl s_client ... | openssl x509`` and
    # ``fixproxy pin --save`` write it.
    return certs[0].public_bytes(serialization.Encoding.DER)


def _load_der(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise TLSHandshakeError(f"cannot parse a certificate: {exc}") from exc


def _pin_of(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return PIN_PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).digest().hex(":").upper()


def _utc_text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _cipher_name(stream: TLSSocketStream) -> str:
    cipher = stream.cipher()
    return cipher[0] if cipher else ""


def _os_reason(exc: OSError) -> str:
    """The OS's words for a failure, including each attempt trio made for one host name."""
    group = exc.__cause__
    if isinstance(group, BaseExceptionGroup):
        reasons = [_os_reason(sub) for sub in _leaves(group.exceptions)
                   if isinstance(sub, OSError)]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    return exc.strerror or str(exc)


def _leaves(exceptions: Iterable[BaseException]) -> Iterable[BaseException]:
    for exc in exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc.exceptions)
        else:
            yield exc


async def _handshake(sock: ssl.SSLSocket) -> None:
    """Finish the TLS handshake of a non-blocking socket, waiting on trio as OpenSSL asks."""
    while True:
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            await trio.lowlevel.wait_readable(sock)
        except ssl.SSLWantWriteError:
            await trio.lowlevel.wait_writable(sock)
        else:
            return


def _handshake_reason(exc: BaseException) -> str:
    """Turn trio's BrokenResourceError and its cause into words an operator can act on."""
    return _describe_tls_failure(exc.__cause__)


def _describe_tls_failure(cause: BaseException | None) -> str:
    """Words an operator can act on for an ssl or OS failure during the handshake."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError) or cause is None:
        return _CLOSED_DURING_HANDSHAKE
    if isinstance(cause, ssl.SSLError):
        if not cause.reason:
            return str(cause)
        detail = cause.reason.replace("_", " ").lower()
        hint = _HANDSHAKE_HINTS.get(cause.reason)
        return f"{detail} ({hint})" if hint else detail
    if isinstance(cause, OSError):
        return f"connection lost during the handshake: {_os_reason(cause)}"
    return str(cause)


_CLOSED_DURING_HANDSHAKE: Final = (
    "the gateway closed the connection during the handshake (no common TLS version or "
    "cipher suite, or the port does not speak TLS; fixproxy requires TLS 1.2 or newer)")
