"""Key loading, permission checks, the Logon signer, and key generation."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from fixproxy.errors import FixProxyError, SigningError
from fixproxy.signing import (
    MAX_PASSPHRASE_FILE,
    LogonSigner,
    PassphraseSource,
    check_key_file_permissions,
    generate_key_pair,
    is_encrypted_pem,
    load_private_key,
    load_public_key,
    public_key_pem,
    verify_signature,
    write_private_key,
)

PAYLOAD = b"20230809-05:28:18.035\x01A\x011\x01your-fix-api-key-uuid\x01KalshiNR"


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
        passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption() if passphrase is None
        else serialization.BestAvailableEncryption(passphrase))
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def same_key(a: rsa.RSAPrivateKey, b: rsa.RSAPrivateKey) -> bool:
    return a.private_numbers() == b.private_numbers()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- loading

@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8,
                                 serialization.PrivateFormat.TraditionalOpenSSL],
                         ids=["PKCS#8", "PKCS#1"])
def test_load_pem_key(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                      fmt: serialization.PrivateFormat) -> None:
    data = pem(rsa_key, fmt)
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----" if fmt is
                           serialization.PrivateFormat.PKCS8
                           else b"-----BEGIN RSA PRIVATE KEY-----")
    path = write_key(tmp_path / "k.pem", data)
    assert same_key(load_private_key(path), rsa_key)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_modes_are_accepted(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                       mode: int) -> None:
    path = write_key(tmp_path / "k.pem", pem(rsa_key), mode)
    check_key_file_permissions(path)
    assert same_key(load_private_key(path), rsa_key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o610, 0o601])
def test_key_readable_by_others_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                           mode: int) -> None:
    path = write_key(tmp_path / "k.pem", pem(rsa_key), mode)
    with pytest.raises(SigningError, match="chmod 600") as info:
        load_private_key(path)
    assert str(path) in str(info.value)
    assert f"{mode:04o}" in str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="cannot read"):
        load_private_key(tmp_path / "absent.pem")


def test_ec_key_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = write_key(tmp_path / "ec.pem", pem(key))
    with pytest.raises(SigningError, match="not an RSA key"):
        load_private_key(path)


def test_short_rsa_key_is_refused(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = write_key(tmp_path / "short.pem", pem(key))
    with pytest.raises(SigningError, match="1024 bits"):
        load_private_key(path)


@pytest.mark.parametrize("data", [
    b"", b"not a key at all", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    os.urandom(64)])
def test_garbage_is_refused(tmp_path: Path, data: bytes) -> None:
    path = write_key(tmp_path / "garbage.pem", data)
    with pytest.raises(SigningError, match="not a PEM RSA private key"):
        load_private_key(path)


def test_public_key_is_not_a_private_key(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write_key(tmp_path / "pub.pem", public_key_pem(rsa_key))
    with pytest.raises(SigningError):
        load_private_key(path)


def test_encrypted_key_with_passphrase(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write_key(tmp_path / "enc.pem", pem(rsa_key, passphrase=b"correct horse"))
    assert b"ENCRYPTED" in path.read_bytes()
    assert same_key(load_private_key(path, b"correct horse"), rsa_key)


def test_encrypted_key_without_passphrase(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write_key(tmp_path / "enc.pem", pem(rsa_key, passphrase=b"correct horse"))
    with pytest.raises(SigningError, match="passphrase"):
        load_private_key(path)


def test_encrypted_key_with_wrong_passphrase(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write_key(tmp_path / "enc.pem", pem(rsa_key, passphrase=b"correct horse"))
    with pytest.raises(SigningError, match="passphrase"):
        load_private_key(path, b"battery staple")


def test_passphrase_for_an_unencrypted_key(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write_key(tmp_path / "k.pem", pem(rsa_key))
    with pytest.raises(SigningError):
        load_private_key(path, b"unneeded")


def test_load_public_key(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "k.pub.pem"
    path.write_bytes(public_key_pem(rsa_key))
    assert load_public_key(path).public_numbers() == rsa_key.public_key().public_numbers()
    assert public_key_pem(rsa_key.public_key()) == public_key_pem(rsa_key)


def test_load_public_key_refuses_ec_and_garbage(tmp_path: Path) -> None:
    ec_path = tmp_path / "ec.pub.pem"
    ec_path.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(SigningError, match="not an RSA key"):
        load_public_key(ec_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"nonsense")
    with pytest.raises(SigningError):
        load_public_key(garbage)
    with pytest.raises(SigningError):
        load_public_key(tmp_path / "absent.pem")


# --------------------------------------------------------------------------- signing

def test_signature_is_base64_of_344_characters(rsa_key: rsa.RSAPrivateKey) -> None:
    signature = LogonSigner(rsa_key)(PAYLOAD)
    assert len(signature) == 344
    assert signature.endswith(b"==")
    assert b"\n" not in signature
    assert len(base64.b64decode(signature, validate=True)) == 256


def test_signature_is_rsa_pss_sha256_with_a_32_byte_salt(rsa_key: rsa.RSAPrivateKey) -> None:
    signature = base64.b64decode(LogonSigner(rsa_key)(PAYLOAD))
    public = rsa_key.public_key()
    public.verify(signature, PAYLOAD,
                  padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                  hashes.SHA256())
    # A verifier demanding another salt length rejects it: the salt is exactly 32 bytes.
    # 222 is the largest salt RSA-2048 with SHA-256 allows (256 - 32 - 2).
    for salt_length in (20, 31, 33, 64, 222):
        with pytest.raises(InvalidSignature):
            public.verify(signature, PAYLOAD,
                          padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                      salt_length=salt_length),
                          hashes.SHA256())
    with pytest.raises(InvalidSignature):
        public.verify(signature, PAYLOAD, padding.PKCS1v15(), hashes.SHA256())


def test_signatures_are_randomised_and_all_verify(rsa_key: rsa.RSAPrivateKey) -> None:
    signer = LogonSigner(rsa_key)
    first, second = signer(PAYLOAD), signer(PAYLOAD)
    assert first != second
    assert verify_signature(signer.public_key(), PAYLOAD, first)
    assert verify_signature(signer.public_key(), PAYLOAD, second)


def test_verify_signature_rejects_what_it_should(rsa_key: rsa.RSAPrivateKey) -> None:
    signer = LogonSigner(rsa_key)
    signature = signer(PAYLOAD)
    public = signer.public_key()
    assert not verify_signature(public, PAYLOAD.replace(b"KalshiNR", b"KalshiRT"), signature)
    assert not verify_signature(public, PAYLOAD, b"not base64!")
    assert not verify_signature(public, PAYLOAD, base64.b64encode(b"\x00" * 256))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not verify_signature(other.public_key(), PAYLOAD, signature)


def test_signer_repr_holds_no_key_material(rsa_key: rsa.RSAPrivateKey) -> None:
    signer = LogonSigner(rsa_key)
    numbers = rsa_key.private_numbers()
    for text in (repr(signer), str(signer)):
        assert "2048" in text
        assert "BEGIN" not in text
        for secret in (numbers.d, numbers.p, numbers.q, numbers.public_numbers.n):
            assert str(secret)[:12] not in text
            assert format(secret, "x")[:12] not in text
        body = b"".join(pem(rsa_key).splitlines()[1:-1]).decode()
        assert body[:16] not in text
    assert not hasattr(signer, "__dict__")


# --------------------------------------------------------------------------- key generation

def test_generate_key_pair(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    key_path, pub_path = generate_key_pair(out, "desk1")
    assert key_path == out / "desk1.key"
    assert pub_path == out / "desk1.pub.pem"
    assert mode_of(key_path) == 0o600
    assert mode_of(out) & 0o077 == 0
    key = load_private_key(key_path)
    assert key.key_size == 2048
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    public = load_public_key(pub_path)
    assert public.public_numbers() == key.public_key().public_numbers()
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    signer = LogonSigner(key)
    assert verify_signature(public, PAYLOAD, signer(PAYLOAD))


@pytest.mark.parametrize("existing", ["kalshi-fix.key", "kalshi-fix.pub.pem"])
def test_generate_key_pair_never_overwrites(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(SigningError, match="refusing to overwrite"):
        generate_key_pair(tmp_path)
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert sorted(path.name for path in tmp_path.iterdir()) == [existing]


def test_generate_key_pair_into_a_path_that_is_a_file(tmp_path: Path) -> None:
    # Every failure must surface as a FixProxyError, not a bare OSError.
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(FixProxyError):
        generate_key_pair(not_a_dir)


def test_write_private_key_creates_0600(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "w.key"
    old_umask = os.umask(0)
    try:
        write_private_key(path, rsa_key)
    finally:
        os.umask(old_umask)
    assert mode_of(path) == 0o600
    assert same_key(load_private_key(path), rsa_key)


# --------------------------------------------------------------------------- passphrases

PASSPHRASE = b"correct horse"


def encrypted_key(tmp_path: Path, key: rsa.RSAPrivateKey,
                  fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> Path:
    return write_key(tmp_path / "enc.pem", pem(key, fmt, passphrase=PASSPHRASE))


def passphrase_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "passphrase"
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8,
                                 serialization.PrivateFormat.TraditionalOpenSSL],
                         ids=["PKCS#8", "PKCS#1"])
def test_encrypted_key_with_passphrase_from_the_environment(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat) -> None:
    path = encrypted_key(tmp_path, rsa_key, fmt)
    assert is_encrypted_pem(path.read_bytes())
    source = PassphraseSource(env="KEY_PASSPHRASE")
    loaded = load_private_key(path, source, environ={"KEY_PASSPHRASE": PASSPHRASE.decode()})
    assert same_key(loaded, rsa_key)


def test_passphrase_from_the_process_environment(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIXPROXY_KEY_PASSPHRASE", PASSPHRASE.decode())
    path = encrypted_key(tmp_path, rsa_key)
    assert same_key(load_private_key(path, PassphraseSource(env="FIXPROXY_KEY_PASSPHRASE")),
                    rsa_key)


@pytest.mark.parametrize("content", [PASSPHRASE, PASSPHRASE + b"\n", PASSPHRASE + b"\r\n",
                                     PASSPHRASE + b"\nsecond line is ignored\n"],
                         ids=["bare", "newline", "crlf", "two_lines"])
def test_encrypted_key_with_passphrase_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                            content: bytes) -> None:
    path = encrypted_key(tmp_path, rsa_key)
    source = PassphraseSource(file=passphrase_file(tmp_path, content))
    assert same_key(load_private_key(path, source), rsa_key)


def test_passphrase_keeps_its_spaces(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write_key(tmp_path / "enc.pem", pem(rsa_key, passphrase=b" padded "))
    source = PassphraseSource(file=passphrase_file(tmp_path, b" padded \n"))
    assert same_key(load_private_key(path, source), rsa_key)
    with pytest.raises(SigningError, match="does not decrypt"):
        load_private_key(path, PassphraseSource(file=passphrase_file(tmp_path, b"padded\n")))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_passphrase_file_open_to_others_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                                   mode: int) -> None:
    path = encrypted_key(tmp_path, rsa_key)
    secret_file = passphrase_file(tmp_path, PASSPHRASE + b"\n", mode)
    with pytest.raises(SigningError) as caught:
        load_private_key(path, PassphraseSource(file=secret_file))
    message = str(caught.value)
    assert f"run: chmod 600 {secret_file}" in message
    assert f"{mode:04o}" in message
    assert "passphrase file" in message


def test_encrypted_key_without_a_passphrase_says_how_to_configure_one(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = encrypted_key(tmp_path, rsa_key)
    with pytest.raises(SigningError) as caught:
        load_private_key(path)
    message = str(caught.value)
    assert f"private key {path} is encrypted and no passphrase is configured" in message
    assert "private_key_passphrase_env" in message
    assert "private_key_passphrase_file" in message


@pytest.mark.parametrize("where", ["env", "file"])
def test_wrong_passphrase_says_so_and_never_shows_it(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                                     where: str) -> None:
    wrong = "battery-staple-9f2e"
    path = encrypted_key(tmp_path, rsa_key)
    if where == "env":
        source = PassphraseSource(env="KEY_PASSPHRASE")
        environ = {"KEY_PASSPHRASE": wrong}
        origin = "environment variable KEY_PASSPHRASE"
    else:
        source = PassphraseSource(file=passphrase_file(tmp_path, wrong.encode() + b"\n"))
        environ = {}
        origin = f"passphrase file {source.file}"
    with pytest.raises(SigningError) as caught:
        load_private_key(path, source, environ=environ)
    message = str(caught.value)
    assert f"the passphrase ({origin}) does not decrypt private key {path}" in message
    for secret in (wrong, PASSPHRASE.decode()):
        assert secret not in message
        assert secret not in repr(caught.value)
        assert secret not in repr(source)


@pytest.mark.parametrize(("environ", "message"), [
    ({}, "KEY_PASSPHRASE (private_key_passphrase_env) is not set"),
    ({"KEY_PASSPHRASE": ""}, "KEY_PASSPHRASE (private_key_passphrase_env) is empty"),
])
def test_passphrase_variable_unset_or_empty(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                            environ: dict[str, str], message: str) -> None:
    path = encrypted_key(tmp_path, rsa_key)
    with pytest.raises(SigningError, match=re.escape(message)):
        load_private_key(path, PassphraseSource(env="KEY_PASSPHRASE"), environ=environ)


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\nsecret on the second line\n"],
                         ids=["empty", "newline", "blank_first_line"])
def test_passphrase_file_with_an_empty_first_line(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                                  content: bytes) -> None:
    path = encrypted_key(tmp_path, rsa_key)
    with pytest.raises(SigningError, match="empty first line"):
        load_private_key(path, PassphraseSource(file=passphrase_file(tmp_path, content)))


def test_missing_passphrase_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = encrypted_key(tmp_path, rsa_key)
    with pytest.raises(SigningError, match="cannot read passphrase file"):
        load_private_key(path, PassphraseSource(file=tmp_path / "absent"))


@pytest.mark.parametrize("source", [PassphraseSource(env="KEY_PASSPHRASE"), PASSPHRASE],
                         ids=["source", "bytes"])
def test_passphrase_for_an_unencrypted_key_says_so(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                                   source: PassphraseSource | bytes) -> None:
    path = write_key(tmp_path / "k.pem", pem(rsa_key))
    with pytest.raises(SigningError) as caught:
        load_private_key(path, source, environ={"KEY_PASSPHRASE": "unused"})
    assert f"private key {path} is not encrypted, but a passphrase is configured" \
        in str(caught.value)


def test_passphrase_source_names_exactly_one_place(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="exactly one"):
        PassphraseSource()
    with pytest.raises(SigningError, match="exactly one"):
        PassphraseSource(env="A", file=tmp_path / "b")
    assert PassphraseSource(env="A").describe() == "environment variable A"
    assert PassphraseSource(file=tmp_path / "b").describe() == f"passphrase file {tmp_path / 'b'}"


def test_only_the_head_of_a_passphrase_file_is_read(tmp_path: Path) -> None:
    # A runaway file (a log pointed at by mistake) is not read whole.
    path = passphrase_file(tmp_path, b"x" * (MAX_PASSPHRASE_FILE * 2))
    assert len(PassphraseSource(file=path).read()) == MAX_PASSPHRASE_FILE


def test_an_unchanged_key_file_is_loaded_once_and_still_checked(tmp_path: Path) -> None:
    key_path, _ = generate_key_pair(tmp_path, "cached")
    first = load_private_key(key_path)
    assert load_private_key(key_path) is first  # a reload pays a hash, not a validation
    key_path.chmod(0o644)
    with pytest.raises(SigningError, match="chmod 600"):
        load_private_key(key_path)  # the permission check runs every time
    key_path.chmod(0o600)
    generate_key_pair(tmp_path / "other", "cached")
    replacement = tmp_path / "other" / key_path.name
    key_path.write_bytes(replacement.read_bytes())
    assert load_private_key(key_path) is not first  # new bytes: loaded and validated again
