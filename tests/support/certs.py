"""Certificates for the TLS and pin tests: a known-answer certificate, trustme CAs, pins
computed without fixproxy, and certificates built by hand for chains trustme cannot make.

The fixtures reach a test module by being imported into it (pytest finds them by name).
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fixproxy.config.model import TLSPolicy, VerifyMode

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


@pytest.fixture(scope="module", name="ca")
def ca_fixture() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module", name="other_ca")
def other_ca_fixture() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module", name="server_cert")
def server_cert_fixture(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture(name="ca_file")
def ca_file_fixture(ca: trustme.CA, tmp_path: Path) -> Path:
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
