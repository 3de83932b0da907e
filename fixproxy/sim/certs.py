"""Throwaway TLS certificates for the simulated gateway: a private CA and one server leaf.

Kalshi's gateway only speaks TLS (1.2 or later), so the simulator must too, and the demo and the
tests need a chain that a client can verify and pin without touching a real CA. The keys are
ECDSA P-256: generating one takes microseconds where RSA-2048 takes a noticeable fraction of a
second, and nothing about the proxy's pinning or hostname checks depends on the key type.

Validity is configurable so a test can build a certificate that is already expired or not yet
valid; the CA always covers the leaf's period and today, so such a test fails on the leaf alone.
A second leaf can be issued by the CA of an earlier set (``issuer``): same CA, different key,
the certificate a pin must refuse even though the chain verifies.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fixproxy.errors import ConfigError

DEFAULT_HOSTNAME: Final = "localhost"
DEFAULT_IP_ADDRESSES: Final = ("127.0.0.1",)
DEFAULT_LIFETIME: Final = dt.timedelta(days=30)
"""Leaf lifetime when ``not_after`` is not given; long enough for any demo run."""
_BACKDATE: Final = dt.timedelta(hours=1)
"""Leaf ``not_before`` default lies in the past so small clock differences do not matter."""
_CA_MARGIN: Final = dt.timedelta(days=1)

CA_CERT_FILE: Final = "ca.pem"
LEAF_CERT_FILE: Final = "server.pem"
LEAF_KEY_FILE: Final = "server.key"


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """Where :meth:`SimCertificates.write` put the PEM files."""

    ca_cert: Path
    leaf_cert: Path
    leaf_key: Path


@dataclass(frozen=True, slots=True)
class SimCertificates:
    """A CA certificate and a server leaf signed by it, as PEM bytes."""

    ca_cert_pem: bytes
    leaf_cert_pem: bytes
    leaf_key_pem: bytes
    """The leaf's private key, unencrypted PKCS#8 PEM."""
    hostname: str
    """The DNS name the leaf was issued for (also its subject CN)."""
    ca_key_pem: bytes | None = None
    """The CA's private key (unencrypted PKCS#8 PEM), kept so the CA can issue further leaves;
    None when unknown. Never written by :meth:`write`."""

    @property
    def leaf_pin(self) -> str:
        """The leaf's SPKI pin, ``sha256/<base64>``."""
        return spki_pin(self.leaf_cert_pem)

    @property
    def ca_pin(self) -> str:
        """The CA's SPKI pin, ``sha256/<base64>``."""
        return spki_pin(self.ca_cert_pem)

    def write(self, directory: Path) -> CertificateFiles:
        """Write ``ca.pem``, ``server.pem`` and ``server.key`` (0600) into ``directory``.

        The directory is created 0700 if missing; existing files are replaced.

        Raises:
            ConfigError: the files cannot be written.
        """
        files = CertificateFiles(directory / CA_CERT_FILE, directory / LEAF_CERT_FILE,
                                 directory / LEAF_KEY_FILE)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write(files.ca_cert, self.ca_cert_pem, 0o644)
            _write(files.leaf_cert, self.leaf_cert_pem, 0o644)
            _write(files.leaf_key, self.leaf_key_pem, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot write certificates into {directory}: {exc.strerror}",
                              path=str(directory)) from exc
        return files

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the leaf, TLS 1.2 or later, no client certs."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The ssl module loads keys only from files; a private temporary directory (0700, key
        # 0600) holds them for the duration of the call.
        with tempfile.TemporaryDirectory(prefix="fixproxy-sim-") as tmp:
            files = self.write(Path(tmp))
            try:
                context.load_cert_chain(files.leaf_cert, files.leaf_key)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"the simulator's certificate cannot be loaded: {exc}") \
                    from exc
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side context trusting only this CA, with hostname checks, TLS 1.2+."""
        context = ssl.create_default_context(cadata=self.ca_cert_pem.decode("ascii"))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def read_certificates(directory: Path, *, valid_for: dt.timedelta = dt.timedelta(0)
                      ) -> SimCertificates | None:
    """The set :meth:`SimCertificates.write` left in ``directory``, if it is whole and its leaf
    is still valid ``valid_for`` from now; None otherwise (missing, unreadable, expired).

    Raises:
        ConfigError: the files are there but are not certificates and a key.
    """
    files = CertificateFiles(directory / CA_CERT_FILE, directory / LEAF_CERT_FILE,
                             directory / LEAF_KEY_FILE)
    try:
        ca_pem, leaf_pem, key_pem = (path.read_bytes() for path in
                                     (files.ca_cert, files.leaf_cert, files.leaf_key))
    except OSError:
        return None
    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem)
        x509.load_pem_x509_certificate(ca_pem)
        serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise ConfigError(f"{directory} holds files that are not the simulator's certificates "
                          f"({exc}); remove them to make new ones", path=str(directory)) from exc
    if leaf.not_valid_after_utc - valid_for <= dt.datetime.now(dt.UTC):
        return None
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hostname = next(iter(names.get_values_for_type(x509.DNSName)), DEFAULT_HOSTNAME)
    return SimCertificates(ca_cert_pem=ca_pem, leaf_cert_pem=leaf_pem, leaf_key_pem=key_pem,
                           hostname=hostname)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        # O_CREAT's mode does not apply to a file that already existed: set it before writing.
        os.fchmod(out.fileno(), mode)
        out.write(data)


def _aware(moment: dt.datetime) -> dt.datetime:
    # A naive datetime is read as UTC, as X.509 times are.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fixproxy simulator"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def generate_certificates(hostname: str = DEFAULT_HOSTNAME, *,
                          ip_addresses: tuple[str, ...] = DEFAULT_IP_ADDRESSES,
                          not_before: dt.datetime | None = None,
                          not_after: dt.datetime | None = None,
                          issuer: SimCertificates | None = None) -> SimCertificates:
    """Create a fresh CA and a server leaf for ``hostname``.

    Args:
        hostname: DNS name in the leaf's subjectAltName (and CN).
        ip_addresses: IP addresses also put in the subjectAltName.
        not_before: start of the leaf's validity (naive means UTC); default one hour ago.
        not_after: end of the leaf's validity; default 30 days after ``not_before``.
        issuer: reuse this set's CA (certificate and key) instead of creating one; the new
            leaf has a new key. The CA's own validity is then whatever it was issued with.
    Returns:
        The PEM bytes of CA, leaf and leaf key.
    Raises:
        ConfigError: an IP address does not parse, the validity period is empty, or
            ``issuer`` carries no CA key.
    """
    now = dt.datetime.now(dt.UTC)
    start = _aware(not_before) if not_before is not None else now - _BACKDATE
    end = _aware(not_after) if not_after is not None else start + DEFAULT_LIFETIME
    if end <= start:
        raise ConfigError(f"certificate validity is empty: not_after {end} <= not_before {start}")
    try:
        ips = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    except ValueError as exc:
        raise ConfigError(f"not an IP address for the certificate: {exc}") from exc

    ca_key, ca_cert = _load_issuer(issuer) if issuer is not None else _new_ca(start, end, now)
    return _issue_leaf(hostname, ips, start, end, ca_key, ca_cert)


def _load_issuer(issuer: SimCertificates
                 ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if issuer.ca_key_pem is None:
        raise ConfigError("the issuing certificate set carries no CA key")
    try:
        key = serialization.load_pem_private_key(issuer.ca_key_pem, password=None)
        cert = x509.load_pem_x509_certificate(issuer.ca_cert_pem)
    except ValueError as exc:
        raise ConfigError(f"the issuing CA cannot be loaded: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the issuing CA key is not an EC key")
    return key, cert


def _new_ca(start: dt.datetime, end: dt.datetime, now: dt.datetime
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fixproxy simulator CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(start, now) - _CA_MARGIN)
        .not_valid_after(max(end, now) + _CA_MARGIN)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert


def _issue_leaf(hostname: str, ips: list[x509.IPAddress], start: dt.datetime,
                end: dt.datetime, ca_key: ec.EllipticCurvePrivateKey,
                ca_cert: x509.Certificate) -> SimCertificates:
    ca_name = ca_cert.subject
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostname))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname), *ips]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return SimCertificates(
        ca_cert_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        leaf_cert_pem=leaf_cert.public_bytes(serialization.Encoding.PEM),
        leaf_key_pem=leaf_key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()),
        hostname=hostname,
        ca_key_pem=ca_key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()),
    )


def spki_pin(cert: bytes) -> str:
    """The SPKI pin of a certificate: ``sha256/`` + base64 of SHA-256 of its DER public key info.

    Args:
        cert: one certificate, PEM (the first one is used) or DER.
    Raises:
        ConfigError: the bytes are not a certificate.
    """
    try:
        if cert.lstrip().startswith(b"-----BEGIN"):
            parsed = x509.load_pem_x509_certificate(cert)
        else:
            parsed = x509.load_der_x509_certificate(cert)
    except ValueError as exc:
        raise ConfigError(f"not an X.509 certificate (PEM or DER): {exc}") from exc
    spki = parsed.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")
