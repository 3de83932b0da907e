"""Reading one configuration file: its state, and the value parsers every table shares.

A :class:`Reader` knows the file (its path, the directory relative paths are resolved against,
where each key is written) and the listen addresses taken so far, so that a second table
listening on the same address is refused wherever it is. Its parsers read one key of a
:class:`~fixproxy.config.tables.Table` each (a listen address, a host name, a file that must
exist, pins, peers, a passphrase source, a verify mode) and raise a ConfigError naming the key
and its line. The tables themselves are read by :mod:`fixproxy.config.loader`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Final, cast

from fixproxy.config.model import VERIFY_MODES, VerifyMode
from fixproxy.config.pins import canonical_pin
from fixproxy.config.tables import LineIndex, Table, toml_type
from fixproxy.errors import ConfigError
from fixproxy.session.peers import PeerFilter, parse_network
from fixproxy.signing import PassphraseSource

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
                              r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")
_DISABLED_VERIFY: Final = frozenset({"none", "off", "no", "false", "insecure", "disabled"})


# --- value checks -------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) names this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def or_default(value: float | None, default: float) -> float:
    """``value``, or ``default`` when the key was absent."""
    # Not ``value or default``: 0 is a valid setting for some keys.
    return default if value is None else value


def listen_identity(host: str, port: int) -> tuple[str, int]:
    """One spelling per listen address (compressed IPv6, lower-case names), to find reuse."""
    try:
        return ipaddress.ip_address(host).compressed, port
    except ValueError:
        return host.lower(), port


class Reader:
    """One configuration file being read, and the parsers of values that several tables use."""

    def __init__(self, path: Path, text: str, *, check_files: bool) -> None:
        self.path = path
        self.base = path.absolute().parent
        self.lines = LineIndex(text)
        self.check_files = check_files
        self.listens: dict[tuple[str, int], str] = {}

    def error(self, message: str, key: str) -> ConfigError:
        return ConfigError(message, key=key, line=self.lines.line_of(key), path=str(self.path))

    # -- shared value parsers --

    def listen(self, table: Table, name: str, *, allow_remote: bool) -> tuple[str, int]:
        text = table.required_string(name)
        host: str
        if text.startswith("["):
            host, sep, port_text = text[1:].partition("]:")
            valid_host = bool(sep)
            if valid_host:
                try:
                    ipaddress.IPv6Address(host)
                except ValueError:
                    valid_host = False
        else:
            host, sep, port_text = text.rpartition(":")
            valid_host = bool(sep) and ":" not in host and (
                _HOSTNAME.fullmatch(host) is not None)
        if not valid_host or not port_text.isdigit() or not port_text.isascii():
            raise table.error(
                name, f"{text!r} is not host:port (for example \"127.0.0.1:9878\"; IPv6 in "
                      f"brackets: \"[::1]:9878\")")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise table.error(name, f"port {port} in {text!r} is out of range; expected 1..65535")
        if not allow_remote and not is_loopback(host):
            raise table.error(
                name, f"{text!r} is not a loopback address. The engine side speaks plain-TCP "
                      f"FIX with no authentication: anyone who can connect can trade as you. "
                      f"Listen on 127.0.0.1, ::1 or localhost, or set allow_remote = true in "
                      f"{table.label} if the network in between is yours alone")
        identity = listen_identity(host, port)
        owner = self.listens.get(identity)
        if owner is not None:
            raise table.error(name, f"{text!r} is already the listen address of {owner}")
        self.listens[identity] = table.key(name)
        return host, port

    def host(self, table: Table, name: str) -> str | None:
        value = table.string(name)
        if value is None:
            return None
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if _HOSTNAME.fullmatch(value) is None:
                raise table.error(
                    name, f"{value!r} is not a host name (give the bare name: no scheme, "
                          f"no port, no path)") from None
        return value

    def file(self, table: Table, name: str, what: str) -> Path | None:
        value = table.string(name)
        return None if value is None else self.existing_file(table, name, value, what)

    def resolve(self, table: Table, name: str, value: str) -> Path:
        """``value`` as a path: ``~`` expanded, relative to the configuration file's folder."""
        try:
            path = Path(value).expanduser()
        except RuntimeError as exc:  # "~user" naming no user, or no home directory
            raise table.error(name, f"cannot expand {value!r}: {exc}") from exc
        return path if path.is_absolute() else self.base / path

    def existing_file(self, table: Table, name: str, value: str, what: str) -> Path:
        if not value:
            raise table.error(name, f"empty path; give the {what} file")
        path = self.resolve(table, name, value)
        if self.check_files:
            try:
                state = "" if path.is_file() else (
                    "is not a regular file" if path.exists() else "does not exist")
            except OSError as exc:  # a directory on the way that we may not search
                state = f"cannot be checked ({exc.strerror or exc})"
            if state:
                raise table.error(name, f"{what} file {str(path)!r} {state}"
                                        f"{_how_to_make(name, path, state)}")
        return path

    def pins(self, table: Table) -> tuple[str, ...] | None:
        pins = table.string_list("pins")
        if pins is None:
            return None
        for index, pin in enumerate(pins):
            try:
                canonical_pin(pin)
            except ConfigError as exc:
                raise self.error(
                    f"{pin!r} is not a pin; expected \"sha256/<44 characters of base64 of the "
                    f"SHA-256 of the SubjectPublicKeyInfo>\" (print them with "
                    f"`fixproxy pin HOST:PORT`)", f"{table.key('pins')}[{index}]") from exc
        return pins

    def peers(self, table: Table) -> PeerFilter | None:
        entries = table.string_list("allow_peers")
        if entries is None:
            return None
        for index, entry in enumerate(entries):
            try:
                parse_network(entry)
            except ConfigError as exc:
                raise self.error(exc.detail, f"{table.key('allow_peers')}[{index}]") from exc
        try:
            return PeerFilter.parse(entries)
        except ConfigError as exc:  # no entry at all
            raise table.error("allow_peers", exc.detail) from exc

    def passphrase(self, table: Table) -> PassphraseSource | None:
        env_key, file_key = "private_key_passphrase_env", "private_key_passphrase_file"
        if table.has(env_key) and table.has(file_key):
            raise table.error(file_key, f"give {env_key} or {file_key}, not both: the key has "
                                        f"one passphrase")
        env = table.string(env_key)
        if env is not None:
            if _ENV_NAME.fullmatch(env) is None:
                # The value is not repeated: it may be the passphrase itself, written by mistake.
                raise table.error(
                    env_key, "not an environment variable name; give the name of the variable "
                             "that holds the passphrase (letters, digits and '_', not starting "
                             "with a digit), never the passphrase itself")
            return PassphraseSource(env=env)
        path = self.file(table, file_key, "passphrase")
        return None if path is None else PassphraseSource(file=path)

    def verify(self, table: Table) -> VerifyMode | None:
        value = table.data.get("verify")
        if value is None:
            return None
        if value is False or (isinstance(value, str) and value.lower() in _DISABLED_VERIFY):
            raise table.error(
                "verify", f"verify = {value!r}: fixproxy never disables certificate "
                          f"verification, because the Logon it signs would go to whoever "
                          f"answers. For a private gateway whose certificate no public CA "
                          f"signs, use verify = \"pin\" with pins (or pinned_cert)")
        if not isinstance(value, str):
            raise table.error("verify", f"expected a string, got {toml_type(value)} {value!r}")
        if value not in VERIFY_MODES:
            raise table.error(
                "verify", f"{value!r} is not a verify mode; expected one of "
                          f"{', '.join(map(repr, VERIFY_MODES))}")
        return cast(VerifyMode, value)


def _how_to_make(name: str, path: Path, state: str) -> str:
    """How to create a missing private key where the configuration expects it."""
    if name != "private_key" or state != "does not exist":
        return ""
    stem = path.name.removesuffix(".key")
    return (f"; create one with `fixproxy keygen --out {path.parent} --name {stem}` and upload "
            f"{stem}.pub.pem to Kalshi for this session's API key")
