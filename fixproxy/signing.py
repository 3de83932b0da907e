"""RSA-PSS signing of Kalshi Logons, and private-key loading with permission checks.

Kalshi verifies RSASSA-PSS with SHA-256, MGF1(SHA-256) and a 32-byte salt (PyCryptodome's
defaults in Kalshi's own example, and the same scheme as its REST signer), base64 in tag 96.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fixproxy.errors import SigningError

MIN_KEY_BITS: Final = 2048
_PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_SHA256: Final = hashes.SHA256()


def check_key_file_permissions(path: Path) -> None:
    """Refuse a private key file that group or others may read or write.

    Raises:
        SigningError: with the chmod that fixes it.
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SigningError(f"cannot read private key {path}: {exc.strerror}") from exc
    if stat.S_IMODE(mode) & 0o077:
        raise SigningError(
            f"private key {path} is accessible by group or others (mode "
            f"{stat.S_IMODE(mode):04o}); run: chmod 600 {path}")


def load_private_key(path: Path, passphrase: bytes | None = None) -> rsa.RSAPrivateKey:
    """Load an RSA private key (PEM, PKCS#8 or PKCS#1) after checking its permissions.

    Raises:
        SigningError: unreadable, too open, not PEM, not RSA, or shorter than 2048 bits.
    """
    check_key_file_permissions(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read private key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        raise SigningError(
            f"private key {path}: {'a passphrase is needed' if passphrase is None else exc}"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningError(
            f"private key {path} is not a PEM RSA private key (PKCS#8 or PKCS#1), or the "
            f"passphrase is wrong") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError(f"private key {path} is not an RSA key; Kalshi requires RSA")
    if key.key_size < MIN_KEY_BITS:
        raise SigningError(
            f"private key {path} has {key.key_size} bits; Kalshi requires RSA-{MIN_KEY_BITS}")
    return key


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """Load an RSA public key (PEM SubjectPublicKeyInfo or PKCS#1)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise SigningError(f"cannot read public key {path}: {exc.strerror}") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningError(f"public key {path} is not a PEM public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise SigningError(f"public key {path} is not an RSA key")
    return key


class LogonSigner:
    """Signs Logon pre-hash strings with one RSA key; the key never leaves this object."""

    __slots__ = ("_key",)

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key

    def __call__(self, payload: bytes) -> bytes:
        """Base64 RSA-PSS-SHA256 signature of ``payload`` (ASCII, no line breaks)."""
        return base64.b64encode(self._key.sign(payload, _PSS, _SHA256))

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def __repr__(self) -> str:
        return f"LogonSigner(<RSA-{self._key.key_size} key>)"


def verify_signature(public_key: rsa.RSAPublicKey, payload: bytes, signature_b64: bytes) -> bool:
    """True if ``signature_b64`` is a valid Kalshi Logon signature of ``payload``."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, payload, _PSS, _SHA256)
    except (InvalidSignature, ValueError):
        return False
    return True


def write_private_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, created 0600 (never briefly readable)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def public_key_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of ``key`` (what Kalshi asks to be uploaded)."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_key_pair(out_dir: Path, name: str = "kalshi-fix") -> tuple[Path, Path]:
    """Create ``<name>.key`` (0600, PKCS#8) and ``<name>.pub.pem`` in ``out_dir`` (0700).

    Raises:
        SigningError: a file already exists (keys are never overwritten).
    """
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SigningError(f"cannot create key directory {out_dir}: {exc.strerror}") from exc
    key_path = out_dir / f"{name}.key"
    pub_path = out_dir / f"{name}.pub.pem"
    for existing in (key_path, pub_path):
        if existing.exists():
            raise SigningError(f"{existing} exists; refusing to overwrite a key")
    key = rsa.generate_private_key(public_exponent=65537, key_size=MIN_KEY_BITS)
    try:
        write_private_key(key_path, key)
        pub_path.write_bytes(public_key_pem(key))
    except OSError as exc:
        raise SigningError(f"cannot write the key pair into {out_dir}: {exc.strerror}") from exc
    return key_path, pub_path
