"""RSA-PSS signing of Kalshi Logons, and private-key loading with permission checks.

Kalshi verifies RSASSA-PSS with SHA-256, MGF1(SHA-256) and a 32-byte salt (PyCryptodome's
defaults in Kalshi's own example, and the same scheme as its REST signer), base64 in tag 96.

A private key may be stored encrypted (PEM with a passphrase). The passphrase is never written
in the configuration file, which is often shared or kept in version control: the file names
where it is (:class:`PassphraseSource`: an environment variable, or a file of its own held to the
same owner-only rule as the key), and it is read only when the key is loaded. No message ever
carries the passphrase; they say where it came from instead.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fixproxy.errors import SigningError

MIN_KEY_BITS: Final = 2048
MAX_PASSPHRASE_FILE: Final = 65536
"""Bytes read at most from a passphrase file; its first line is the passphrase."""
_PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_SHA256: Final = hashes.SHA256()
# How PEM marks an encrypted key: PKCS#8 has its own label, PKCS#1 ("traditional") a header.
_ENCRYPTED_PKCS8: Final = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_ENCRYPTED_PKCS1: Final = b"Proc-Type: 4,ENCRYPTED"
_HOW_TO_CONFIGURE: Final = (
    "set private_key_passphrase_env (the name of an environment variable holding the "
    "passphrase) or private_key_passphrase_file (a file, mode 600, whose first line is the "
    "passphrase) in the key's [[session]]")


def _check_owner_only(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SigningError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if stat.S_IMODE(mode) & 0o077:
        raise SigningError(
            f"{what} {path} is accessible by group or others (mode "
            f"{stat.S_IMODE(mode):04o}); run: chmod 600 {path}")


def check_key_file_permissions(path: Path) -> None:
    """Refuse a private key file that group or others may read or write.

    Raises:
        SigningError: with the chmod that fixes it.
    """
    _check_owner_only(path, "private key")


@dataclass(frozen=True, slots=True)
class PassphraseSource:
    """Where the passphrase of an encrypted private key is read from: one of the two.

    Holds names only, never the passphrase, so it may be logged and compared freely.
    """

    env: str | None = None
    """The name of an environment variable holding the passphrase."""
    file: Path | None = None
    """A file, owner-only like the key, whose first line is the passphrase."""

    def __post_init__(self) -> None:
        if (self.env is None) == (self.file is None):
            raise SigningError("a passphrase source names exactly one of an environment "
                               "variable and a file")

    def describe(self) -> str:
        """Where the passphrase comes from, for messages."""
        if self.env is not None:
            return f"environment variable {self.env}"
        return f"passphrase file {self.file}"

    def read(self, environ: Mapping[str, str] | None = None) -> bytes:
        """Read the passphrase.

        Args:
            environ: the environment to read; ``os.environ`` by default.
        Raises:
            SigningError: the variable is unset or empty; the file is unreadable, open to
                group or others, or its first line is empty.
        """
        if self.env is not None:
            value = (os.environ if environ is None else environ).get(self.env)
            if value is None:
                raise SigningError(
                    f"environment variable {self.env} (private_key_passphrase_env) is not "
                    f"set; export the key's passphrase in it before starting fixproxy")
            if not value:
                raise SigningError(
                    f"environment variable {self.env} (private_key_passphrase_env) is empty; "
                    f"it must hold the key's passphrase")
            return os.fsencode(value)
        path = self.file
        assert path is not None  # __post_init__: exactly one is set
        _check_owner_only(path, "passphrase file")
        try:
            with path.open("rb") as source:
                head = source.read(MAX_PASSPHRASE_FILE)
        except OSError as exc:
            raise SigningError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
        passphrase = head.split(b"\n", 1)[0].removesuffix(b"\r")
        if not passphrase:
            raise SigningError(f"passphrase file {path} (private_key_passphrase_file) has an "
                               f"empty first line; put the key's passphrase on it")
        return passphrase


def is_encrypted_pem(data: bytes) -> bool:
    """True if ``data`` is a PEM private key that needs a passphrase."""
    return _ENCRYPTED_PKCS8 in data or _ENCRYPTED_PKCS1 in data


def load_private_key(path: Path, passphrase: bytes | PassphraseSource | None = None, *,
                     environ: Mapping[str, str] | None = None) -> rsa.RSAPrivateKey:
    """Load an RSA private key (PEM, PKCS#8 or PKCS#1) after checking its permissions.

    Args:
        passphrase: for an encrypted key, the passphrase itself or where to read it; None
            for an unencrypted key.
        environ: the environment a :class:`PassphraseSource` reads; ``os.environ`` by default.
    Raises:
        SigningError: unreadable, too open, not PEM, not RSA, or shorter than 2048 bits; an
            encrypted key without a passphrase, a wrong passphrase, a passphrase for a key
            that is not encrypted. The message never contains the passphrase.
    """
    check_key_file_permissions(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read private key {path}: {exc.strerror}") from exc
    encrypted = is_encrypted_pem(data)
    origin = passphrase.describe() if isinstance(passphrase, PassphraseSource) \
        else "given by the caller"
    if encrypted and passphrase is None:
        raise SigningError(f"private key {path} is encrypted and no passphrase is configured; "
                           f"{_HOW_TO_CONFIGURE}")
    if not encrypted and passphrase is not None:
        raise SigningError(
            f"private key {path} is not encrypted, but a passphrase is configured ({origin}); "
            f"remove private_key_passphrase_env or private_key_passphrase_file from its "
            f"[[session]], or point private_key at the encrypted key")
    secret = passphrase.read(environ) if isinstance(passphrase, PassphraseSource) \
        else passphrase
    cache_key = (hashlib.sha256(data).digest(),
                 None if secret is None else hashlib.sha256(secret).digest())
    cached = _LOADED.get(cache_key)
    if cached is not None:
        _LOADED.move_to_end(cache_key)
        return cached
    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except TypeError as exc:
        # cryptography's own check disagreed with is_encrypted_pem (an unusual PEM header).
        if secret is None:
            raise SigningError(f"private key {path} is encrypted and no passphrase is "
                               f"configured; {_HOW_TO_CONFIGURE}") from exc
        raise SigningError(f"private key {path} is not encrypted, but a passphrase is "
                           f"configured ({origin}); remove it from the key's [[session]]") \
            from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        if encrypted:
            raise SigningError(
                f"the passphrase ({origin}) does not decrypt private key {path}: it is "
                f"wrong, or the key file is damaged; put the passphrase the key was encrypted "
                f"with there") from exc
        raise SigningError(
            f"private key {path} is not a PEM RSA private key (PKCS#8 or PKCS#1)") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError(f"private key {path} is not an RSA key; Kalshi requires RSA")
    if key.key_size < MIN_KEY_BITS:
        raise SigningError(
            f"private key {path} has {key.key_size} bits; Kalshi requires RSA-{MIN_KEY_BITS}")
    _LOADED[cache_key] = key
    while len(_LOADED) > MAX_CACHED_KEYS:
        _LOADED.popitem(last=False)
    return key


MAX_CACHED_KEYS: Final = 256
"""Keys kept after loading, by the SHA-256 of the file's bytes and of the passphrase.

Loading an RSA key validates it: about 30 ms of CPU that holds the GIL, so every session
relay thread stalls behind it. A reload re-reads every session's key; an unchanged file (the
usual case) now costs a hash. The bound is far above any configuration's session count."""
_LOADED: Final[OrderedDict[tuple[bytes, bytes | None], rsa.RSAPrivateKey]] = OrderedDict()
"""Only the thread that loads configurations (trio's) uses it."""


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
