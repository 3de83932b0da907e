"""Which engine addresses may use a session's listener (``allow_peers``), and what to say
about listeners that face the network.

Theory of operation
-------------------
The engine side of fixproxy is plain-TCP FIX, and nothing in it authenticates the engine: the
engine does not sign its Logon (fixproxy signs for it, with the session's key), and FIX's own
Username (553) and Password (554) would travel in clear text to a process that has no account
database to check them against. So whoever can open a TCP connection to a listener trades with
that session's API key. The first defence is the loopback default (``allow_remote``, checked by
:mod:`fixproxy.config`); where an operator lets a listener face a network, ``allow_peers``
narrows who may connect, by source address, and a firewall should do the same in front of it.

Addresses are compared as addresses, never as text: an IPv4 engine reaching a dual-stack
listener appears as ``::ffff:10.1.2.3`` and is matched as ``10.1.2.3``; a link-local zone
(``%eth0``) is ignored. A peer whose address cannot be parsed at all is refused: the filter
fails closed.

Rejected alternatives: checking 553/554 in the engine's Logon (a shared secret sent in clear over
the very network the check is meant to distrust, and one more secret to keep out of the logs);
and TLS with client certificates on the engine side (the engines this proxy exists for speak
only plain TCP). An address filter plus a firewall is the control that fits plain TCP.

This module is pure: the relay asks :meth:`PeerFilter.allows` about each accepted connection,
the configuration loader builds the filter and logs :func:`remote_listener_warning`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from fixproxy.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_ALL_IPV4: Final = ipaddress.IPv4Network((0, 0))
_ALL_IPV6: Final = ipaddress.IPv6Network((0, 0))
_LOOPBACK: Final = (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128"))
_MAPPED_PREFIX: Final = 96
"""IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) carry the IPv4 address in their last 32
bits."""


def peer_address(host: str) -> Address | None:
    """The address a connection came from, normalised for matching; None if ``host`` is not
    an IP address.

    An IPv4-mapped IPv6 address becomes its IPv4 address; a zone (``%eth0``) is dropped.
    """
    text = host.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(text: str) -> Network:
    """Parse one ``allow_peers`` entry: an address (``10.1.2.3``, ``fd00::7``) or a network
    in CIDR form (``10.1.0.0/16``, ``fd00::/8``).

    Raises:
        ConfigError: not an address or network, a network written with host bits set (which
            would silently admit more than was written), or an address with a zone.
    """
    if "%" in text:
        raise ConfigError(f"{text!r} has a zone (%...); write the address without it, zones "
                          f"play no part in matching")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            widened = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(
                f"{text!r} is not an IP address or network; write an address (\"10.1.2.3\", "
                f"\"fd00::7\") or a network in CIDR form (\"10.1.0.0/16\", \"fd00::/8\"); "
                f"host names are not accepted") from exc
        raise ConfigError(
            f"{text!r} has host bits set beyond its prefix; write the network as "
            f"\"{widened}\", or the single address without a prefix") from exc
    if (isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= _MAPPED_PREFIX
            and network.network_address.ipv4_mapped is not None):
        # Peers are matched as IPv4 (peer_address), so an IPv4-mapped entry is stored as IPv4.
        return ipaddress.IPv4Network((network.network_address.ipv4_mapped,
                                      network.prefixlen - _MAPPED_PREFIX))
    return network


def _show(network: Network) -> str:
    full = network.max_prefixlen == network.prefixlen
    return str(network.network_address) if full else str(network)


@dataclass(frozen=True, slots=True)
class PeerFilter:
    """The source addresses allowed to connect to one session's listener."""

    networks: tuple[Network, ...]
    """Addresses are networks of one address (/32, /128). Never empty."""

    @classmethod
    def parse(cls, entries: Iterable[str]) -> PeerFilter:
        """Build a filter from ``allow_peers`` entries (see :func:`parse_network`).

        Raises:
            ConfigError: an entry is malformed, or there is none (a filter admitting nobody is
                a mistake, not a setting).
        """
        networks = tuple(dict.fromkeys(parse_network(entry) for entry in entries))
        if not networks:
            raise ConfigError("an empty list would refuse every engine; list the addresses or "
                              "networks that may connect, or remove the key to allow any")
        return cls(networks)

    def allows(self, host: str) -> bool:
        """True if a connection from ``host`` (the peer's IP address as text) may proceed.

        A host that is not an IP address is refused.
        """
        address = peer_address(host)
        if address is None:
            return False
        return any(address in network for network in self.networks)

    @property
    def unrestricted(self) -> bool:
        """True when every IPv4 and IPv6 address is allowed (the default)."""
        return _ALL_IPV4 in self.networks and _ALL_IPV6 in self.networks

    def admits_loopback(self) -> bool:
        """True if some loopback address (127.0.0.0/8, ::1) is allowed: a loopback listener
        whose filter admits none could never be used."""
        return any(network.overlaps(loopback) for network in self.networks
                   for loopback in _LOOPBACK if network.version == loopback.version)

    def describe(self) -> str:
        """The allowed addresses and networks, as an operator would write them."""
        return ", ".join(_show(network) for network in self.networks)

    def refusal_text(self, host: str) -> str:
        """The Text (58) of the Logout that refuses a connection from ``host``.

        It goes to the refused peer, so it names the setting to change but not the addresses
        that are allowed: those describe the operator's network to whoever is knocking.
        """
        return (f"connections from {host} are not allowed on this session; if this engine "
                f"should trade here, add {host} to the session's allow_peers in the fixproxy "
                f"configuration")

    def log_text(self, host: str, session: str) -> str:
        """The operator's log line for a refused connection: who, and what would admit it."""
        return (f"refused a connection from {host} on session {session!r}: not in allow_peers "
                f"({self.describe()}); if it should trade, add its address or network to "
                f"allow_peers of that [[session]] (or of [proxy], the default for every "
                f"session)")


ANY_PEER: Final = PeerFilter((_ALL_IPV4, _ALL_IPV6))
"""The default: every address may connect (the loopback default of ``listen`` is the guard)."""


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def remote_listener_warning(session: str, host: str, port: int, peers: PeerFilter) -> str:
    """The startup warning for a session whose listener is not on loopback.

    Args:
        session: the session's name.
        host, port: its ``listen`` address.
        peers: its effective ``allow_peers``.
    """
    text = (f"session {session!r} listens on {_endpoint(host, port)}, beyond this machine "
            f"(allow_remote = true). The engine side is plain-TCP FIX without authentication "
            f"or encryption: anyone who can reach this port can log on and trade with the "
            f"session's API key, and anyone on the path can read its orders and fills. ")
    if peers.unrestricted:
        return text + ("Every source address is allowed: set allow_peers to the engine's "
                       "address, and restrict the port with a firewall.")
    return text + (f"Only {peers.describe()} may connect (allow_peers); restrict the port "
                   f"with a firewall as well, since a source address can be spoofed on a "
                   f"shared network.")


def remote_metrics_warning(host: str, port: int) -> str:
    """The startup warning for a metrics endpoint that is not on loopback."""
    return (f"the metrics endpoint listens on {_endpoint(host, port)}, beyond this machine "
            f"(allow_remote = true in [metrics]). It has no authentication: anyone who can "
            f"reach it reads session names, states and traffic. Restrict the port with a "
            f"firewall to your Prometheus servers.")
