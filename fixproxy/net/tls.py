"""The TLS client to a gateway: one context per session, the connect and handshake, the pin check.

Theory of operation
-------------------
Kalshi's FIX gateways speak TLS 1.2 or newer, behind AWS Network Load Balancers. Each session
gets one ``ssl.SSLContext`` (:func:`make_client_context`), built when the session starts: TLS
1.2 at least, ECDHE with AEAD ciphers only, no renegotiation, no compression, and chain plus
hostname verification unless ``verify = "pin"``. Which certificates a pin may match, and the
three verify modes, are explained in :mod:`fixproxy.net.pins`.

The connection is a stdlib ``ssl.SSLSocket`` in non-blocking mode rather than trio's
``SSLStream``: OpenSSL reads and writes the socket itself, so nothing is copied through memory
BIOs in Python, and a call that succeeds at once costs no scheduler pass; trio is asked to wait
only when OpenSSL wants the socket readable or writable (:mod:`fixproxy.net.streams`). trio
still makes the TCP connection (``open_tcp_stream``: name resolution, one attempt per address),
whose socket is then detached into a plain ``socket.socket`` and wrapped.

Order of events in :func:`open_gateway_stream`: TCP connect; the TLS handshake, driven
explicitly (``do_handshake_on_connect=False``, then :func:`_handshake` calls ``do_handshake``
until OpenSSL stops asking to wait), because an implicit handshake would start on the first
write, and that would be the Logon; then the pins, checked on the certificates this handshake
tied to the gateway (the verified chain; in ``pin`` mode the leaf and the issuers linked to it:
:func:`~fixproxy.net.pins.check_chain`); only then is the stream returned, so no FIX byte
reaches a gateway whose pins have not matched. Connect and handshake together are bounded by
``connect_timeout``, and a timeout names the phase that stalled. The configuration files were
read once when the session started (:class:`~fixproxy.net.pins.GatewayTrust`), never per
connection.

The caller owns the returned stream. Admission hands its ``SSLSocket`` to the session's relay
thread (:mod:`fixproxy.proxy.relay`), which writes the signed Logon and uses the socket alone
until it returns; only then does trio close it. The SSL object is never used by two threads at
once.

Python 3.11's ``ssl`` does not publish the peer's chain; the C object beneath every
``ssl.SSLSocket`` has ``get_verified_chain()`` and ``get_unverified_chain()`` (public from
3.13), so :func:`_chain_der` reaches them through the socket's private ``_sslobj``.

close_notify: a TCP close without a TLS close_notify is a plain end of stream
(:class:`TLSSocketStream` treats ``SSLEOFError`` like ``SSLZeroReturnError``), and closing sends
none. Gateways behind an AWS NLB can drop TCP right after a Logout, and a strict stream would
turn the normal end of every session into an error. Truncation is still detected, in FIX terms:
a session ends with a Logout (35=5), and a cut inside a message fails the framer's BodyLength
and CheckSum checks.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from _ssl import ENCODING_DER  # the C module's constant; ``ssl`` does not re-export it
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import trio

from fixproxy.config.model import TLSPolicy
from fixproxy.errors import (
    ConfigError,
    ConnectError,
    ConnectTimeout,
    OutOfDescriptors,
    TLSHandshakeError,
)
from fixproxy.net.listen import out_of_descriptors
from fixproxy.net.pins import (
    CertificateInfo,
    ChainReport,
    GatewayTrust,
    PeerChain,
    check_chain,
    describe_certificate,
    load_certificate,
)
from fixproxy.net.streams import NonBlockingSocketStream

MIN_TLS_VERSION: Final = ssl.TLSVersion.TLSv1_2
"""Kalshi's connectivity page: TLS 1.2 or higher."""
TLS12_CIPHERS: Final = "@SECLEVEL=2:ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
"""The TLS 1.2 cipher suites offered: forward-secret key exchange (ECDHE) with an AEAD cipher
(AES-GCM, ChaCha20-Poly1305) only. Python's default list still has CBC suites with SHA-1 or
SHA-2 MACs and finite-field DHE; AWS load balancers' TLS policies all offer ECDHE with AES-GCM,
so nothing a Kalshi gateway needs is lost. Security level 2 also refuses RSA keys under 2048
bits. TLS 1.3 suites are separate in OpenSSL and all AEAD; its defaults stand."""
_HANDSHAKE_HINTS: Final = {
    "WRONG_VERSION_NUMBER": "the port does not seem to speak TLS",
    "UNSUPPORTED_PROTOCOL": "no common TLS version; fixproxy requires TLS 1.2 or newer",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no common TLS version; fixproxy requires TLS 1.2 or newer",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "no common cipher suite or signature algorithm",
    "NO_SHARED_CIPHER": "no common cipher suite",
}


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
    """The pins of the certificates that count for pinning
    (:func:`~fixproxy.net.pins.check_chain`)."""


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
        leaf = load_certificate(chain.presented[0])
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


class TLSSocketStream(NonBlockingSocketStream):
    """A TLS connection on a non-blocking stdlib ``ssl.SSLSocket`` (see fixproxy.net.streams).

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
            if out_of_descriptors(exc):
                raise OutOfDescriptors(f"cannot connect to {peer}: {_os_reason(exc)}"
                                       ) from exc
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
