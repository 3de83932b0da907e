"""Access control and key passphrases: allow_peers, private_key_passphrase_*, and verify modes
that would disable verification.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.config_files import (
    EXAMPLE,
    Case,
    expected_line,
    gateway,
    load,
    load_one,
    proxy,
    session,
    write,
)

from fixproxy.config.loader import load_config
from fixproxy.errors import ConfigError
from fixproxy.session.peers import ANY_PEER, PeerFilter
from fixproxy.signing import PassphraseSource

# --- access control and key passphrases -----------------------------------------------------


SECURITY_ERROR_CASES = [
    Case("allow-peers-bad-entry", proxy('allow_peers = ["10.0.0.0/8", "bogus"] #<') + session(0),
         "proxy.allow_peers[1]", "not an IP address or network"),
    Case("allow-peers-host-bits", session(0, 'allow_peers = ["127.0.0.1/8"] #<'),
         "session[0].allow_peers[0]", 'write the network as "127.0.0.0/8"'),
    Case("allow-peers-host-name", session(0, 'allow_peers = ["engine.local"] #<'),
         "session[0].allow_peers[0]", "host names are not accepted"),
    Case("allow-peers-empty", session(0, "allow_peers = [] #<"), "session[0].allow_peers",
         "would refuse every engine"),
    Case("allow-peers-string", session(0, 'allow_peers = "10.0.0.1" #<'),
         "session[0].allow_peers", "expected an array of strings"),
    Case("allow-peers-number", session(0, "allow_peers = [10] #<"),
         "session[0].allow_peers[0]", "expected a string"),
    Case("allow-peers-shuts-out-loopback", session(0, 'allow_peers = ["10.0.0.0/8"] #<'),
         "session[0].allow_peers", "no engine could ever connect"),
    Case("proxy-allow-peers-shuts-out-loopback",
         proxy('allow_peers = ["10.0.0.0/8"] #<') + session(0), "proxy.allow_peers",
         "[[session]] number 1 (s0) listens on loopback"),
    Case("passphrase-both", session(0, 'private_key_passphrase_env = "P"',
                                    'private_key_passphrase_file = "cert.pem" #<'),
         "session[0].private_key_passphrase_file", "not both"),
    Case("passphrase-env-not-a-name", session(0, 'private_key_passphrase_env = "$P" #<'),
         "session[0].private_key_passphrase_env", "not an environment variable name"),
    Case("passphrase-env-number", session(0, "private_key_passphrase_env = 1 #<"),
         "session[0].private_key_passphrase_env", "expected a string"),
    Case("passphrase-file-absent", session(0, 'private_key_passphrase_file = "nope" #<'),
         "session[0].private_key_passphrase_file", "does not exist"),
    Case("passphrase-file-empty-path", session(0, 'private_key_passphrase_file = "" #<'),
         "session[0].private_key_passphrase_file", "empty path"),
    Case("passphrase-key-misspelt", session(0, 'private_key_passphrase = "P" #<'),
         "session[0].private_key_passphrase", "did you mean"),
    Case("verify-off", gateway('verify = "off" #<') + session(0), "gateway.verify",
         "never disables certificate verification"),
    Case("verify-none-capitals", session(0, 'verify = "None" #<'), "session[0].verify",
         "never disables certificate verification"),
    Case("verify-insecure", session(0, 'verify = "insecure" #<'), "session[0].verify",
         "never disables certificate verification"),
]


@pytest.mark.parametrize("case", SECURITY_ERROR_CASES,
                         ids=[case.id for case in SECURITY_ERROR_CASES])
def test_security_keys_reject_with_key_and_line(confdir: Path, case: Case) -> None:
    path = write(confdir, case.text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert error.key == case.key
    assert error.line == expected_line(case.text)
    assert case.message in error.detail


def test_a_passphrase_written_as_the_variable_name_is_not_repeated(confdir: Path) -> None:
    secret = "hunter2 is my passphrase"
    with pytest.raises(ConfigError) as info:
        load(confdir, session(0, f'private_key_passphrase_env = "{secret}"'))
    assert "hunter2" not in str(info.value)


def test_allow_peers_default_and_override(confdir: Path) -> None:
    assert load_one(confdir, session(0)).allow_peers == ANY_PEER
    assert load(confdir, session(0)).proxy.allow_peers == ANY_PEER
    config = load(confdir, proxy('allow_peers = ["127.0.0.1", "10.1.0.0/16"]')
                  + session(0) + session(1, 'allow_peers = ["::1", "fd00::/8"]'))
    inherited, own = config.sessions
    assert inherited.allow_peers == PeerFilter.parse(["127.0.0.1", "10.1.0.0/16"])
    assert inherited.allow_peers.allows("10.1.9.9")
    assert not inherited.allow_peers.allows("::1")
    assert own.allow_peers == PeerFilter.parse(["::1", "fd00::/8"])
    assert own.allow_peers.allows("::1")
    assert not own.allow_peers.allows("10.1.9.9")


def test_allow_peers_with_a_remote_listener(confdir: Path) -> None:
    loaded = load_one(confdir, session(0, 'listen = "10.1.2.3:9878"', "allow_remote = true",
                                       'allow_peers = ["10.1.0.0/16"]'))
    assert loaded.allow_peers.allows("10.1.7.7")
    assert not loaded.allow_peers.allows("127.0.0.1")


def test_passphrase_sources(confdir: Path) -> None:
    assert load_one(confdir, session(0)).private_key_passphrase is None
    from_env = load_one(confdir, session(0, 'private_key_passphrase_env = "FIX_KEY_PASS"'))
    assert from_env.private_key_passphrase == PassphraseSource(env="FIX_KEY_PASS")
    from_file = load_one(confdir, session(0, 'private_key_passphrase_file = "other.pem"'))
    assert from_file.private_key_passphrase == PassphraseSource(file=confdir / "other.pem")


def test_example_documents_the_security_keys() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in ("allow_peers", "private_key_passphrase_env", "private_key_passphrase_file"):
        assert f"\n#   {key} " in text, key
    assert "\n# allow_peers = " in text
