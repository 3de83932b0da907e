"""The TLS upstream: context, handshake errors, pins and the ``fixproxy pin`` report.

Certificates come from trustme or are built here with cryptography; the gateway is a small trio
TLS server on 127.0.0.1 that records whether its handshake finished and every byte it received
afterwards, so the tests can show that nothing is written before the pins are checked.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import socket
import ssl
import struct
import tomllib
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from fixproxy.config.model import TLSPolicy, VerifyMode
from fixproxy.errors import (
    ConfigError,
    ConnectError,
    ConnectTimeout,
    PinMismatchError,
    TLSHandshakeError,
    UpstreamError,
)
from fixproxy.net.tls import (
    MAX_LINKED_CHAIN,
    GatewayTrust,
    HandshakeInfo,
    PeerChain,
    TLSSocketStream,
    check_chain,
    describe_certificate,
    fetch_chain,
    format_chain_report,
    leaf_pem,
    make_client_context,
    open_gateway_stream,
    spki_pin,
)

GUARD = 10.0
"""Seconds any single test may wait on the network before failing."""
LOGON_BYTES = b"8=FIXT.1.1\x019=5\x0135=A\x0110=000\x01"

# A self-signed P-256 certificate made with the openssl command line, and its pin and fingerprint
# as openssl computes them:
#   openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary
#   | base64;  openssl x509 -noout -fingerprint -sha256
KAT_PEM = b"""-----BEGIN CERTIFICATE-----
MIIBtTCCAVugAwIBAgIUH2GiOmPxo2v8EMN8LXBKXKYPUCUwCgYIKoZIzj0EAwIw
LzEaMBgGA1UEAwwRa2F0LmZpeHByb3h5LnRlc3QxETAPBgNVBAoMCGZpeHByb3h5
MCAXDTI2MTEyNDAyNTQyOVoYDzIxMjYxMDMxMDI1NDI5WjAvMRowGAYDVQQDDBFr
YXQuZml4cHJveHkudGVzdDERMA8GA1UECgwIZml4cHJveHkwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAARrelZMgU6cRtTEMf0F/LrsXT1uItvbjGSKwH3FbM7LWiEd
WYEaLqX6ugr10e9w9wSpKDSltjqiB/on7Z15UtJ4o1MwUTAdBgNVHQ4EFgQUxKzZ
n+VbBeC8I5jMjo4EQVzrp6AwHwYDVR0jBBgwFoAUxKzZn+VbBeC8I5jMjo4EQVzr
p6AwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA4/E3OTVyfJcs
bziWXU4IRDT6GcHgYVrPjeL/mmcuLkcCIFOFwUb3uox+UAfJkBiFKQBoGPCUeWLU
SblDeVwZSclJ
-----END CERTIFICATE-----
"""
KAT_PIN = "sha256/y9HGnKNPwh3Um7nr7x15jYkOiaMICyIr89eIq/4HbvA="
KAT_FINGERPRINT = ("91:95:EA:19:E1:D3:5C:F9:A4:F3:BC:9A:13:4C:94:1F:"
                   "C7:9E:77:61:70:F5:D8:37:CC:A7:79:73:08:EF:59:EA")
UNUSED_PIN = "sha256/" + base64.b64encode(bytes(range(32))).decode()


# --- certificates -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def leaf_der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def ca_der(ca: trustme.CA) -> bytes:
    return ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode())


def independent_pin(der: bytes) -> str:
    """The pin computed without fixproxy: SPKI DER from cryptography, SHA-256, base64."""
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def policy(verify: VerifyMode, ca_file: Path | None = None, *, pins: tuple[str, ...] = (),
           pinned_cert: Path | None = None, server_name: str = "localhost") -> TLSPolicy:
    return TLSPolicy(server_name=server_name, verify=verify, ca_file=ca_file, pins=pins,
                     pinned_cert=pinned_cert)


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def chain_context(tmp_path: Path, key_pem: bytes, *certs_pem: bytes) -> ssl.SSLContext:
    """A server context presenting exactly ``certs_pem`` (leaf first) with ``key_pem``."""
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(certs_pem))
    key = tmp_path / "key.pem"
    key.write_bytes(key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(chain), str(key))
    return context


# Certificates built by hand, for chains trustme cannot make (a leaf signing a leaf).
Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def build_cert(common_name: str, *, ca: bool, issuer: Issued | None = None,
               key: ec.EllipticCurvePrivateKey | None = None) -> Issued:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, signing_key = (name, key) if issuer is None else (issuer[0].subject, issuer[1])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signing_key, hashes.SHA256()))
    return cert, key


def der_of(issued: Issued) -> bytes:
    return issued[0].public_bytes(serialization.Encoding.DER)


def trust(verify: VerifyMode, *pins: str, pinned: bytes | None = None) -> GatewayTrust:
    return GatewayTrust(server_name="gateway.test", verify=verify, pins=frozenset(pins),
                        pinned_cert=Path("pinned.pem") if pinned else None,
                        pinned_leaf_der=pinned)


# --- the test gateway ---------------------------------------------------------------------------


@dataclass
class Accepted:
    """One connection as the test gateway saw it."""

    handshake_done: bool = False
    received: bytearray = field(default_factory=bytearray)
    closed: trio.Event = field(default_factory=trio.Event)


@dataclass
class Gateway:
    port: int
    accepted: list[Accepted]

    async def only_connection(self) -> Accepted:
        """Wait until the single connection has ended, and return it."""
        assert len(self.accepted) == 1
        await self.accepted[0].closed.wait()
        return self.accepted[0]


@asynccontextmanager
async def tls_gateway(context: ssl.SSLContext) -> AsyncIterator[Gateway]:
    """A TLS server that records the handshake outcome and every byte it then receives."""
    accepted: list[Accepted] = []

    async def handle(tcp: trio.SocketStream) -> None:
        seen = Accepted()
        accepted.append(seen)
        stream = trio.SSLStream(tcp, context, server_side=True, https_compatible=True)
        try:
            await stream.do_handshake()
            seen.handshake_done = True
            while data := await stream.receive_some():
                seen.received += data
        except trio.BrokenResourceError:
            pass  # the client refused us, or dropped TCP: recorded by handshake_done/received
        finally:
            seen.closed.set()
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0,
                                                          host="127.0.0.1"))
        yield Gateway(port=listeners[0].socket.getsockname()[1], accepted=accepted)
        nursery.cancel_scope.cancel()


async def connect(port: int, tls_policy: TLSPolicy, *, connect_timeout: float = 5.0
                  ) -> tuple[TLSSocketStream, HandshakeInfo]:
    with trio.fail_after(GUARD):
        return await open_gateway_stream(
            "127.0.0.1", port, GatewayTrust.from_policy(tls_policy),
            make_client_context(tls_policy), connect_timeout=connect_timeout)


async def expect_refusal(context: ssl.SSLContext, tls_policy: TLSPolicy,
                         error: type[UpstreamError]) -> tuple[UpstreamError, Accepted]:
    """Connect, expect ``error``, and return it with what the gateway saw."""
    async with tls_gateway(context) as gateway:
        with pytest.raises(error) as caught:
            await connect(gateway.port, tls_policy)
        with trio.fail_after(GUARD):
            seen = await gateway.only_connection()
    return caught.value, seen


async def expect_success(context: ssl.SSLContext, tls_policy: TLSPolicy) -> HandshakeInfo:
    """Connect, write a Logon-sized message, and check the gateway received exactly that."""
    async with tls_gateway(context) as gateway:
        stream, info = await connect(gateway.port, tls_policy)
        with trio.fail_after(GUARD):
            await stream.send_all(LOGON_BYTES)
            await stream.aclose()
            seen = await gateway.only_connection()
    assert seen.handshake_done
    assert bytes(seen.received) == LOGON_BYTES
    return info


def assert_nothing_written(seen: Accepted) -> None:
    """The handshake finished on the gateway's side, then the client closed without writing."""
    assert seen.handshake_done
    assert bytes(seen.received) == b""


# --- pins over a real handshake -----------------------------------------------------------------


async def test_leaf_pin_matches_and_reports_the_handshake(
        ca: trustme.CA, server_cert: trustme.LeafCert, ca_file: Path) -> None:
    leaf = leaf_der(server_cert)
    pin = independent_pin(leaf)
    info = await expect_success(server_context(server_cert),
                                policy("ca+pin", ca_file, pins=(pin,)))
    cert = x509.load_der_x509_certificate(leaf)
    assert info.tls_version in ("TLSv1.2", "TLSv1.3")
    assert info.cipher
    assert info.leaf_subject == cert.subject.rfc4514_string()
    assert info.leaf_not_after == cert.not_valid_after_utc
    # The verified chain: the leaf, then the local trust anchor the server never sent.
    assert info.presented_pins == (pin, independent_pin(ca_der(ca)))
    assert 0 <= info.connect_seconds <= info.handshake_seconds


async def test_ca_pin_matches_the_trust_anchor(
        ca: trustme.CA, server_cert: trustme.LeafCert, ca_file: Path) -> None:
    ca_pin = independent_pin(ca_der(ca))
    await expect_success(server_context(server_cert), policy("ca+pin", ca_file, pins=(ca_pin,)))


async def test_pin_mismatch_names_the_presented_pins_and_writes_nothing(
        ca: trustme.CA, server_cert: trustme.LeafCert, ca_file: Path) -> None:
    error, seen = await expect_refusal(server_context(server_cert),
                                       policy("ca+pin", ca_file, pins=(UNUSED_PIN,)),
                                       PinMismatchError)
    assert isinstance(error, PinMismatchError)
    leaf_pin = independent_pin(leaf_der(server_cert))
    assert error.result == "pin_mismatch"
    assert leaf_pin in str(error)
    assert UNUSED_PIN in str(error)
    assert leaf_pin in error.presented
    assert independent_pin(ca_der(ca)) in error.presented
    assert error.expected == (UNUSED_PIN,)
    assert_nothing_written(seen)


async def test_pinned_cert_matches_the_exact_leaf(
        server_cert: trustme.LeafCert, ca_file: Path, tmp_path: Path) -> None:
    pinned = tmp_path / "kalshi-fix.pem"
    pinned.write_bytes(server_cert.cert_chain_pems[0].bytes())
    await expect_success(server_context(server_cert), policy("ca+pin", ca_file,
                                                             pinned_cert=pinned))


async def test_pinned_cert_mismatch_is_refused_before_any_byte(
        ca: trustme.CA, server_cert: trustme.LeafCert, ca_file: Path, tmp_path: Path) -> None:
    pinned = tmp_path / "kalshi-fix.pem"
    ca.issue_cert("localhost").cert_chain_pems[0].write_to_path(str(pinned))
    error, seen = await expect_refusal(server_context(server_cert),
                                       policy("ca+pin", ca_file, pinned_cert=pinned),
                                       PinMismatchError)
    assert isinstance(error, PinMismatchError)
    assert str(pinned) in str(error)
    assert describe_certificate(leaf_der(server_cert)).sha256_fingerprint in str(error)
    assert error.expected == ()
    assert_nothing_written(seen)


async def test_pin_mode_trusts_a_matching_pin_from_an_unknown_ca(
        other_ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    # other_ca did not sign the server's certificate and no ca_file is given: only the pin.
    pin = independent_pin(leaf_der(server_cert))
    info = await expect_success(server_context(server_cert),
                                policy("pin", pins=(pin,), server_name="not-in-the-cert"))
    assert info.presented_pins == (pin,)


async def test_pin_mode_refuses_a_wrong_pin(server_cert: trustme.LeafCert) -> None:
    error, seen = await expect_refusal(server_context(server_cert),
                                       policy("pin", pins=(UNUSED_PIN,)), PinMismatchError)
    assert error.result == "pin_mismatch"
    assert independent_pin(leaf_der(server_cert)) in str(error)
    assert_nothing_written(seen)


async def test_an_appended_genuine_certificate_does_not_satisfy_a_pin(
        ca: trustme.CA, other_ca: trustme.CA, server_cert: trustme.LeafCert,
        tmp_path: Path) -> None:
    # A CA the client trusts issues a certificate for the gateway's name to someone else, who
    # appends the genuine (public) gateway certificate to the chain. The pin must not match.
    rogue = other_ca.issue_cert("localhost", "127.0.0.1")
    context = chain_context(tmp_path, rogue.private_key_pem.bytes(),
                            rogue.cert_chain_pems[0].bytes(),
                            server_cert.cert_chain_pems[0].bytes())
    both_cas = tmp_path / "cas.pem"
    both_cas.write_bytes(ca.cert_pem.bytes() + other_ca.cert_pem.bytes())
    genuine_pin = independent_pin(leaf_der(server_cert))
    error, seen = await expect_refusal(context, policy("ca+pin", both_cas, pins=(genuine_pin,)),
                                       PinMismatchError)
    assert error.result == "pin_mismatch"
    assert_nothing_written(seen)


# --- handshake failures -------------------------------------------------------------------------


async def test_unknown_ca_is_a_tls_error(
        other_ca: trustme.CA, server_cert: trustme.LeafCert, tmp_path: Path) -> None:
    wrong = tmp_path / "other.pem"
    other_ca.cert_pem.write_to_path(str(wrong))
    error, seen = await expect_refusal(server_context(server_cert), policy("ca", wrong),
                                       TLSHandshakeError)
    assert error.result == "tls_error"
    assert "unable to get local issuer certificate" in str(error)
    assert not seen.handshake_done


async def test_hostname_not_in_certificate_is_a_tls_error(
        server_cert: trustme.LeafCert, ca_file: Path) -> None:
    error, _ = await expect_refusal(
        server_context(server_cert), policy("ca", ca_file, server_name="gateway.invalid"),
        TLSHandshakeError)
    assert error.result == "tls_error"
    assert "Hostname mismatch" in str(error)
    assert "gateway.invalid" in str(error)


async def test_expired_certificate_is_a_tls_error(ca: trustme.CA, ca_file: Path) -> None:
    now = datetime.now(UTC)
    expired = ca.issue_cert("localhost", not_before=now - timedelta(days=30),
                            not_after=now - timedelta(days=1))
    error, _ = await expect_refusal(server_context(expired), policy("ca+pin", ca_file,
                                    pins=(independent_pin(leaf_der(expired)),)),
                                    TLSHandshakeError)
    assert error.result == "tls_error"
    assert "certificate has expired" in str(error)


def tls11_server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is the point here
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    cert.configure_cert(context)
    return context


async def test_a_tls_1_1_gateway_is_refused(server_cert: trustme.LeafCert,
                                            ca: trustme.CA, ca_file: Path) -> None:
    context = tls11_server_context(server_cert)
    # Control: the server really completes a TLS 1.1 handshake with a client that allows it.
    lenient = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        lenient.minimum_version = ssl.TLSVersion.TLSv1_1
    lenient.set_ciphers("DEFAULT:@SECLEVEL=0")
    ca.configure_trust(lenient)
    async with tls_gateway(context) as gateway:
        with trio.fail_after(GUARD):
            tcp = await trio.open_tcp_stream("127.0.0.1", gateway.port)
            control = trio.SSLStream(tcp, lenient, server_hostname="localhost")
            await control.do_handshake()
            assert control.version() == "TLSv1.1"
            await control.aclose()

    error, seen = await expect_refusal(context, policy("ca", ca_file), TLSHandshakeError)
    assert error.result == "tls_error"
    assert "127.0.0.1" in str(error)
    assert "TLS 1.2 or newer" in str(error)
    assert not seen.handshake_done


async def test_a_plain_tcp_port_is_a_tls_error() -> None:
    async def plain_fix(tcp: trio.SocketStream) -> None:
        """Answer the ClientHello the way a plain FIX acceptor would: with FIX bytes."""
        with contextlib.suppress(trio.BrokenResourceError):
            await tcp.receive_some()
            await tcp.send_all(LOGON_BYTES * 4)
            while await tcp.receive_some():
                pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, plain_fix, 0,
                                                          host="127.0.0.1"))
        with pytest.raises(TLSHandshakeError) as caught:
            await connect(listeners[0].socket.getsockname()[1], policy("pin", pins=(KAT_PIN,)))
        nursery.cancel_scope.cancel()
    assert "does not seem to speak TLS" in str(caught.value)


async def test_connect_refused_names_the_address() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The port was bound, never listened on, and is closed now: nothing accepts there.
    with pytest.raises(ConnectError) as caught:
        await connect(port, policy("pin", pins=(UNUSED_PIN,)))
    assert type(caught.value) is ConnectError
    assert caught.value.result == "refused"
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "refused" in str(caught.value).lower()


async def test_connect_timeout_bounds_a_stalled_handshake(
        mock_clock: trio.testing.MockClock) -> None:
    # Real-time pace so the guard works, and a jump past connect_timeout once the gateway has
    # the ClientHello: the timeout under test needs no wall-clock wait.
    mock_clock.rate = 1.0
    hello = trio.Event()
    client_gone = trio.Event()

    async def silent(tcp: trio.SocketStream) -> None:
        """Accept TCP, read the ClientHello, never answer; note when the client hangs up."""
        first = await tcp.receive_some()
        assert first[:1] == b"\x16"  # a TLS handshake record
        hello.set()
        while await tcp.receive_some():
            pass
        client_gone.set()

    errors: list[BaseException] = []

    async def client(port: int, done: trio.Event) -> None:
        try:
            await open_gateway_stream("127.0.0.1", port, GatewayTrust.from_policy(
                policy("pin", pins=(UNUSED_PIN,))), make_client_context(
                policy("pin", pins=(UNUSED_PIN,))), connect_timeout=60.0)
        except ConnectTimeout as exc:
            errors.append(exc)
        finally:
            done.set()

    with trio.fail_after(61.0 + GUARD):  # the jump below uses 61 s of it
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0,
                                                              host="127.0.0.1"))
            done = trio.Event()
            nursery.start_soon(client, listeners[0].socket.getsockname()[1], done)
            await hello.wait()
            assert not done.is_set()
            mock_clock.jump(61.0)
            await done.wait()
            await client_gone.wait()  # the client closed its socket on the way out
            nursery.cancel_scope.cancel()
    assert len(errors) == 1
    assert isinstance(errors[0], ConnectTimeout)
    assert errors[0].result == "timeout"
    assert "TLS handshake" in str(errors[0])


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


# --- context and trust configuration ------------------------------------------------------------


@pytest.mark.parametrize(("verify", "mode", "hostname"), [
    ("ca+pin", ssl.CERT_REQUIRED, True),
    ("ca", ssl.CERT_REQUIRED, True),
    ("pin", ssl.CERT_NONE, False),
])
def test_client_context_settings(verify: VerifyMode, mode: ssl.VerifyMode, hostname: bool,
                                 ca_file: Path) -> None:
    context = make_client_context(policy(verify, ca_file, pins=(UNUSED_PIN,)))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.verify_mode == mode
    assert context.check_hostname is hostname


async def test_a_verifying_trust_refuses_a_non_verifying_context() -> None:
    pin_only = policy("pin", pins=(KAT_PIN,))
    with pytest.raises(ConfigError, match="make_client_context"):
        await open_gateway_stream("127.0.0.1", 1, GatewayTrust.from_policy(
            policy("ca+pin", pins=(KAT_PIN,))), make_client_context(pin_only),
            connect_timeout=1.0)


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_client_context(policy("ca", tmp_path / "missing.pem"))
    assert "missing.pem" in str(caught.value)
    assert caught.value.key == "ca_file"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"garbage\.pem"):
        make_client_context(policy("ca", garbage))


@pytest.mark.parametrize(("pins", "verify", "message"), [
    (("sha1/" + KAT_PIN[7:],), "ca+pin", "must start with"),
    (("sha256/not*base64",), "ca+pin", "not valid base64"),
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


# --- fixproxy pin -------------------------------------------------------------------------------


def paste_block(text: str) -> list[str]:
    """Parse the ``pins = [...]`` block at the end of the report as TOML."""
    block = text[text.rindex("pins = [\n"):]
    pins: list[str] = tomllib.loads(block)["pins"]
    return pins


async def test_fetch_chain_reports_a_verified_chain(
        ca: trustme.CA, server_cert: trustme.LeafCert, ca_file: Path) -> None:
    async with tls_gateway(server_context(server_cert)) as gateway:
        with trio.fail_after(GUARD):
            report = await fetch_chain("127.0.0.1", gateway.port, "localhost", timeout=5.0,
                                       ca_file=ca_file)
    leaf = leaf_der(server_cert)
    assert [c.der for c in report.presented] == [leaf]
    assert report.verified
    assert report.verify_error is None
    assert [c.der for c in report.verified_chain] == [leaf, ca_der(ca)]
    assert leaf_pem(report) == server_cert.cert_chain_pems[0].bytes()

    text = format_chain_report(report)
    leaf_info = describe_certificate(leaf)
    assert leaf_info.subject in text
    assert leaf_info.issuer in text
    assert leaf_info.sha256_fingerprint in text
    assert f'pins = ["{independent_pin(leaf)}"]' in text
    assert f'pins = ["{independent_pin(ca_der(ca))}"]' in text  # the trust anchor, for a CA pin
    assert leaf_info.not_after.strftime("%Y-%m-%d") in text
    assert "verifies against" in text
    assert paste_block(text) == [independent_pin(leaf)]


async def test_fetch_chain_shows_an_unverifiable_chain(
        ca: trustme.CA, server_cert: trustme.LeafCert, tmp_path: Path) -> None:
    context = chain_context(tmp_path, server_cert.private_key_pem.bytes(),
                            server_cert.cert_chain_pems[0].bytes(), ca.cert_pem.bytes())
    async with tls_gateway(context) as gateway:
        with trio.fail_after(GUARD):
            report = await fetch_chain("127.0.0.1", gateway.port, "localhost", timeout=5.0)
    assert [c.der for c in report.presented] == [leaf_der(server_cert), ca_der(ca)]
    assert not report.verified
    assert report.verify_error is not None
    assert "certificate verify failed" in report.verify_error
    assert report.verified_chain == ()
    text = format_chain_report(report)
    assert "does NOT verify against the system trust store" in text
    # The issuer's pin is offered commented out: it would accept anything that CA signs.
    assert f'# "{independent_pin(ca_der(ca))}"' in text
    assert paste_block(text) == [independent_pin(leaf_der(server_cert))]


async def test_fetch_chain_refused_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(GUARD), pytest.raises(ConnectError):
        await fetch_chain("127.0.0.1", port, timeout=5.0)


# --- protocol hardening: versions, cipher suites, renegotiation, compression ---------------------


TLS12_AEAD_ECDHE = frozenset(
    cipher["name"] for cipher in make_client_context(policy("ca")).get_ciphers()
    if cipher["protocol"] == "TLSv1.2")
"""The TLS 1.2 suites fixproxy offers (all checked below to be ECDHE with an AEAD cipher)."""


@pytest.fixture(scope="module")
def rsa_ca() -> trustme.CA:
    return trustme.CA(key_type=trustme.KeyType.RSA)


@pytest.fixture(scope="module")
def rsa_server_cert(rsa_ca: trustme.CA) -> trustme.LeafCert:
    return rsa_ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)


def tls12_server_context(cert: trustme.LeafCert, suite: str) -> ssl.SSLContext:
    """A TLS 1.2-only server that offers exactly ``suite``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"{suite}:@SECLEVEL=0")
    cert.configure_cert(context)
    return context


def test_tls12_suites_are_ecdhe_with_aead_only() -> None:
    context = make_client_context(policy("ca"))
    tls12 = [cipher for cipher in context.get_ciphers() if cipher["protocol"] == "TLSv1.2"]
    assert tls12, "no TLS 1.2 suite at all would lock out TLS 1.2 gateways"
    for cipher in tls12:
        assert cipher["aead"], cipher["name"]
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert cipher["auth"] in ("auth-rsa", "auth-ecdsa"), cipher["name"]
        for weak in ("CBC", "RC4", "DES", "MD5", "NULL", "EXPORT", "PSK", "SRP"):
            assert weak not in cipher["name"].upper() and weak.lower() not in \
                cipher["symmetric"], cipher["name"]
        assert not cipher["name"].endswith("-SHA"), cipher["name"]  # SHA-1 MAC
    # Both certificate types Kalshi's load balancer could present are covered.
    assert {"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"} <= TLS12_AEAD_ECDHE
    # Stricter than Python's own default list, which still offers CBC suites.
    default = {c["name"] for c in ssl.create_default_context().get_ciphers()}
    assert default - {c["name"] for c in context.get_ciphers()}


@pytest.mark.parametrize("verify", ["ca", "ca+pin", "pin"])
def test_every_context_is_hardened(verify: VerifyMode, ca_file: Path) -> None:
    context = make_client_context(policy(verify, ca_file,
                                         pins=() if verify == "ca" else (UNUSED_PIN,)))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.MAXIMUM_SUPPORTED
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.options & ssl.OP_NO_COMPRESSION
    assert {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"} \
        == TLS12_AEAD_ECDHE


@pytest.mark.parametrize(("suite", "key_type"), [
    ("ECDHE-ECDSA-AES128-SHA", "ecdsa"),  # CBC with a SHA-1 MAC
    ("ECDHE-ECDSA-AES256-SHA384", "ecdsa"),  # CBC; still in Python's default list
    ("ECDHE-RSA-AES128-SHA256", "rsa"),  # CBC; still in Python's default list
    ("AES128-SHA", "rsa"),  # RSA key transport: no forward secrecy; CBC with SHA-1
    ("AES128-GCM-SHA256", "rsa"),  # AEAD, but RSA key transport: no forward secrecy
], ids=["ecdhe-cbc-sha1", "ecdhe-cbc-sha384", "ecdhe-rsa-cbc-sha256", "rsa-cbc-sha1",
        "rsa-gcm"])
async def test_a_gateway_offering_only_weak_suites_is_refused(
        suite: str, key_type: str, ca: trustme.CA, server_cert: trustme.LeafCert,
        rsa_ca: trustme.CA, rsa_server_cert: trustme.LeafCert, tmp_path: Path) -> None:
    issuer, cert = (ca, server_cert) if key_type == "ecdsa" else (rsa_ca, rsa_server_cert)
    context = tls12_server_context(cert, suite)
    trust_file = tmp_path / "ca.pem"
    issuer.cert_pem.write_to_path(str(trust_file))
    # Control: the server really completes a handshake with a client that allows the suite.
    lenient = ssl.create_default_context()
    lenient.set_ciphers(f"{suite}:@SECLEVEL=0")
    issuer.configure_trust(lenient)
    async with tls_gateway(context) as gateway:
        with trio.fail_after(GUARD):
            tcp = await trio.open_tcp_stream("127.0.0.1", gateway.port)
            control = trio.SSLStream(tcp, lenient, server_hostname="localhost")
            await control.do_handshake()
            cipher = control.cipher()
            assert cipher is not None and cipher[0] == suite
            await control.aclose()

    error, seen = await expect_refusal(context, policy("ca", trust_file), TLSHandshakeError)
    assert error.result == "tls_error"
    assert "127.0.0.1" in str(error)
    assert "cipher suite" in str(error)
    assert not seen.handshake_done


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
async def test_a_tls12_gateway_with_a_modern_suite_is_accepted(
        key_type: str, ca: trustme.CA, server_cert: trustme.LeafCert, rsa_ca: trustme.CA,
        rsa_server_cert: trustme.LeafCert, tmp_path: Path) -> None:
    issuer, cert = (ca, server_cert) if key_type == "ecdsa" else (rsa_ca, rsa_server_cert)
    trust_file = tmp_path / "ca.pem"
    issuer.cert_pem.write_to_path(str(trust_file))
    # The server accepts anything; the suite chosen is one fixproxy offered.
    info = await expect_success(tls12_server_context(cert, "ALL"), policy("ca", trust_file))
    assert info.tls_version == "TLSv1.2"
    assert info.cipher in TLS12_AEAD_ECDHE


async def test_tls13_is_used_when_offered_and_nothing_is_compressed(
        server_cert: trustme.LeafCert, ca_file: Path) -> None:
    async with tls_gateway(server_context(server_cert)) as gateway:
        stream, info = await connect(gateway.port, policy("ca", ca_file))
        try:
            assert info.tls_version == "TLSv1.3"
            assert stream.ssl_socket.compression() is None
        finally:
            with trio.fail_after(GUARD):
                await stream.aclose()


@dataclass
class RenegotiationOutcome:
    """What the renegotiating server saw."""

    error: str | None = None
    received: bytes = b""


def renegotiating_server(listener: socket.socket, chain_file: Path,
                         outcome: RenegotiationOutcome) -> None:
    """Blocking TLS 1.2 server that asks for a renegotiation right after the handshake.

    Python's ssl cannot start a renegotiation, pyOpenSSL can. The server sends a HelloRequest,
    then "hello"; reads one message; answers "bye". Socket timeouts bound every wait.
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate_chain_file(str(chain_file))
    context.use_privatekey_file(str(chain_file))
    sock, _ = listener.accept()
    sock.setblocking(True)
    bound = struct.pack("ll", int(GUARD), 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
    connection = SSL.Connection(context, sock)
    connection.set_accept_state()
    try:
        connection.do_handshake()
        connection.renegotiate()
        connection.do_handshake()  # sends the HelloRequest
        connection.sendall(b"hello")
        outcome.received = connection.recv(100)
        connection.sendall(b"bye")
    except SSL.Error as exc:
        outcome.error = str(exc)
    finally:
        sock.close()


async def talk_to_a_renegotiating_server(context: ssl.SSLContext, server_cert: trustme.LeafCert,
                                         ca_file: Path, tmp_path: Path
                                         ) -> tuple[RenegotiationOutcome, list[bytes]]:
    """Connect with ``context``, read, write "ping", read; return both sides' views."""
    chain_file = tmp_path / "server.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(chain_file))
    outcome = RenegotiationOutcome()
    received: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(GUARD)
        port = listener.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(trio.to_thread.run_sync, renegotiating_server,
                                                 listener, chain_file, outcome))
            with trio.fail_after(GUARD):
                stream, _ = await open_gateway_stream(
                    "127.0.0.1", port, GatewayTrust.from_policy(policy("ca", ca_file)),
                    context, connect_timeout=GUARD)
                try:
                    received.append(await stream.receive_some())
                    await stream.send_all(b"ping")
                    received.append(await stream.receive_some())
                except trio.BrokenResourceError as exc:
                    received.append(repr(exc.__cause__).encode())
                finally:
                    await trio.aclose_forcefully(stream)
    return outcome, received


async def test_a_server_requested_renegotiation_is_refused(
        server_cert: trustme.LeafCert, ca_file: Path, tmp_path: Path) -> None:
    context = make_client_context(policy("ca", ca_file))
    outcome, received = await talk_to_a_renegotiating_server(context, server_cert, ca_file,
                                                             tmp_path)
    assert outcome.error is not None and "no renegotiation" in outcome.error
    assert received[0] == b"hello"
    assert b"bye" not in received

    # Control: the same context without OP_NO_RENEGOTIATION renegotiates and carries on, so it
    # is that option, and nothing else about the server, that refuses.
    context.options &= ~ssl.OP_NO_RENEGOTIATION
    outcome, received = await talk_to_a_renegotiating_server(context, server_cert, ca_file,
                                                             tmp_path)
    assert outcome.error is None
    assert outcome.received == b"ping"
    assert received == [b"hello", b"bye"]
