"""``fixproxy sim --config-out``: a fixproxy configuration that points at this simulator.

Pointing fixproxy at the simulator takes its host, every endpoint's port, the CA to trust and
the pin of its certificate; the simulator knows all of them once it listens, so it writes the
file instead of leaving the operator to work them out. Each registered API key becomes one
session, laid out as in ``conf/fixproxy.toml``: a key made with ``fixproxy keygen --name
order-entry`` (public half ``order-entry.pub.pem``) becomes the session ``order-entry`` on
KalshiNR, listening on 127.0.0.1:9878, signing with ``order-entry.key`` beside the public
half; a key of another name takes the next endpoint of that layout not yet used.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from fixproxy.errors import ConfigError

EXAMPLE_SESSIONS: Final = (
    ("order-entry", "KalshiNR", 9878),
    ("order-entry-rt", "KalshiRT", 9879),
    ("drop-copy", "KalshiDC", 9880),
    ("post-trade", "KalshiPT", 9881),
    ("rfq", "KalshiRFQ", 9882),
    ("market-data", "KalshiMD", 9883),
)
"""(session name, endpoint, engine-facing port) of the shipped example configuration."""
PUBLIC_SUFFIX: Final = ".pub.pem"
"""What ``fixproxy keygen`` appends to the name of a public key; ``.key`` for the private."""


def _stem(public_key: Path) -> str:
    name = public_key.name
    return name.removesuffix(PUBLIC_SUFFIX) if name.endswith(PUBLIC_SUFFIX) else public_key.stem


def _path_for(target: Path, base: Path) -> str:
    """``target`` relative to the configuration's folder when it lies below it, else absolute
    (fixproxy resolves relative paths against that folder)."""
    absolute, folder = target.resolve(), base.resolve()
    return os.path.relpath(absolute, folder) if absolute.is_relative_to(folder) else str(absolute)


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    try:
        return "127.0.0.1" if ipaddress.ip_address(host).is_unspecified else host
    except ValueError:
        return host


def render_sim_config(key_specs: Sequence[str], ports: Mapping[str, tuple[str, int]], *,
                      ca_file: Path, pin: str, server_name: str, base: Path) -> str:
    """The configuration text for sessions of ``key_specs`` (``APIKEY=public.pem``) against
    the simulator bound at ``ports`` (endpoint -> (host, port)); paths relative to ``base``.

    Raises:
        ConfigError: more keys than the layout has sessions.
    """
    hosts = {_client_host(host) for host, _ in ports.values()}
    host = hosts.pop() if len(hosts) == 1 else "127.0.0.1"
    lines = [
        "# fixproxy configuration for the simulated Kalshi gateway (`fixproxy sim`), written by",
        "# `fixproxy sim --config-out`. Check it with `fixproxy check --config <this file>`.",
        "",
        "[gateway]",
        f"host = {json.dumps(host)}",
        f"server_name = {json.dumps(server_name)}",
        f"ca_file = {json.dumps(_path_for(ca_file, base))}",
        f"pins = [{json.dumps(pin)}]",
        'verify = "ca+pin"',
        "",
        "[metrics]",
        'listen = "127.0.0.1:9464"',
    ]
    free = list(EXAMPLE_SESSIONS)
    parsed = [(api_key.strip(), Path(path.strip()))
              for api_key, _, path in (spec.partition("=") for spec in key_specs)]
    chosen: dict[str, tuple[str, str, int]] = {}
    for api_key, public in parsed:  # the keys named after a session of the layout first
        match = next((entry for entry in free if entry[0] == _stem(public)), None)
        if match is not None:
            free.remove(match)
            chosen[api_key] = match
    for api_key, _ in parsed:
        if api_key not in chosen:
            if not free:
                raise ConfigError(f"--config-out lays out at most {len(EXAMPLE_SESSIONS)} "
                                  f"sessions, one per endpoint; {len(parsed)} keys were given")
            chosen[api_key] = free.pop(0)
    for api_key, public in parsed:
        name, endpoint, listen_port = chosen[api_key]
        private = public.with_name(_stem(public) + ".key")
        lines += [
            "",
            "[[session]]",
            f"name = {json.dumps(name)}",
            f'listen = "127.0.0.1:{listen_port}"',
            f"endpoint = {json.dumps(endpoint)}",
            f"port = {ports[endpoint][1]}",
            f"api_key = {json.dumps(api_key)}",
            f"private_key = {json.dumps(_path_for(private, base))}",
        ]
    return "\n".join(lines) + "\n"


def write_sim_config(path: Path, key_specs: Sequence[str],
                     ports: Mapping[str, tuple[str, int]], *, ca_file: Path, pin: str,
                     server_name: str) -> None:
    """Write :func:`render_sim_config`'s text to ``path``.

    Raises:
        ConfigError: the file cannot be written, or see :func:`render_sim_config`.
    """
    text = render_sim_config(key_specs, ports, ca_file=ca_file, pin=pin,
                             server_name=server_name, base=path.parent)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}", path=str(path)) from exc
