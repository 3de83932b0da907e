"""The processes measured between engine and gateway (stunnel4, the bare relays, fixproxy) and
their material.

All get the same job: accept plain TCP on 127.0.0.1, open TLS 1.2+ to the gateway, verify its
certificate against the throwaway CA and the name ``localhost``, relay bytes. stunnel runs in
client mode with ``verifyChain`` and ``checkHost`` from a generated file, in the foreground so
that its pid is the one started; fixproxy runs as ``python3 -m fixproxy.cli run`` with a
generated TOML file that also pins the gateway's leaf certificate (``verify = "ca+pin"``), as an
operator would run it, so its CPU and memory are those of the real command. Its metrics
endpoint stays on (on a free port), as in production, and each fixproxy process gets a
``[proxy] state_dir`` of its own, whose pid file a reload finds it by.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench import BenchError
from bench.proc import Child, Worker, free_port
from bench.wire import ENDPOINT
from fixproxy.cli.main import ENV_SWITCH_INTERVAL
from fixproxy.config.loader import load_config
from fixproxy.config.model import Config
from fixproxy.signing import generate_key_pair
from fixproxy.sim.certs import CertificateFiles, generate_certificates

SERVER_NAME: Final = "localhost"
STUNNEL_NAMES: Final = ("stunnel4", "stunnel")
INSTALL_HINT: Final = "install it with: apt-get install -y stunnel4"


@dataclass(frozen=True, slots=True)
class Account:
    """One FIX API key and its RSA key pair."""

    api_key: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True, slots=True)
class Material:
    """Throwaway certificates and keys for one run, in a temporary directory."""

    workdir: Path
    certs: CertificateFiles
    leaf_pin: str
    accounts: tuple[Account, ...]


def make_material(workdir: Path, accounts: int) -> Material:
    """Generate a CA, a ``localhost`` leaf and ``accounts`` RSA-2048 key pairs."""
    certs = generate_certificates(SERVER_NAME)
    files = certs.write(workdir / "certs")
    made = []
    for index in range(accounts):
        private_key, public_key = generate_key_pair(workdir / "keys", f"account-{index}")
        made.append(Account(str(uuid.uuid4()), private_key, public_key))
    return Material(workdir, files, certs.leaf_pin, tuple(made))


def stunnel_binary() -> str:
    """The stunnel4 executable.

    Raises:
        BenchError: it is not installed.
    """
    for name in STUNNEL_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    raise BenchError(f"stunnel4 is not installed; {INSTALL_HINT}")


def stunnel_version(binary: str) -> dict[str, str]:
    """stunnel's version and the OpenSSL it runs with, from ``stunnel -version``."""
    try:
        done = subprocess.run([binary, "-version"], capture_output=True, timeout=10,
                              check=False, text=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"cannot run {binary} -version: {exc}") from exc
    text = done.stdout + done.stderr
    version = re.search(r"stunnel (\S+)", text)
    openssl = re.search(r"Running\s+with (OpenSSL [^\n]+)", text)
    return {"stunnel": version[1] if version else "unknown",
            "stunnel_openssl": openssl[1].strip() if openssl else "unknown"}


def start_stunnel(material: Material, gateway_port: int, name: str) -> tuple[Child, int]:
    """stunnel4 in client mode, one service; returns the child and its accept port."""
    binary = stunnel_binary()
    port = free_port()
    conf = material.workdir / f"{name}.conf"
    conf.write_text(
        "foreground = yes\n"
        "pid =\n"
        "[fix]\n"
        "client = yes\n"
        f"accept = 127.0.0.1:{port}\n"
        f"connect = 127.0.0.1:{gateway_port}\n"
        f"sni = {SERVER_NAME}\n"
        "verifyChain = yes\n"
        f"CAfile = {material.certs.ca_cert}\n"
        f"checkHost = {SERVER_NAME}\n"
        # stunnel's defaults already set TCP_NODELAY on both sides; said here so that the
        # comparison with fixproxy (trio sets it on every TCP stream) does not depend on them.
        "socket = l:TCP_NODELAY=1\n"
        "socket = r:TCP_NODELAY=1\n")
    child = Child(name, [binary, str(conf)], material.workdir / f"{name}.log")
    try:
        child.wait_listening([port])
    except BenchError:
        child.stop()
        raise
    return child, port


def start_trio_relay(material: Material, gateway_port: int, name: str) -> tuple[Child, int]:
    """The bare trio relay (bench/floor.py): fixproxy's I/O layer without its FIX work."""
    return _start_bare_relay(material, gateway_port, name, "bench.floor")


def start_python_relay(material: Material, gateway_port: int, name: str,
                       switch_interval: float, *, shared: bool = False) -> tuple[Child, int]:
    """The bare thread relay (bench/pyrelay.py): fixproxy's data-plane design without its FIX
    work, with the GIL switch interval fixproxy runs with; ``shared``: one relay thread for
    every connection instead of one each."""
    return _start_bare_relay(material, gateway_port, name, "bench.pyrelay",
                             repr(switch_interval), *(["shared"] if shared else []))


def _start_bare_relay(material: Material, gateway_port: int, name: str, module: str,
                      *extra: str) -> tuple[Child, int]:
    """``python3 -m MODULE LISTEN_PORT GATEWAY_PORT CA_FILE SERVER_NAME [EXTRA...]``, once it
    listens."""
    port = free_port()
    child = Child(name, [sys.executable, "-m", module, str(port), str(gateway_port),
                         str(material.certs.ca_cert), SERVER_NAME, *extra],
                  material.workdir / f"{name}.log")
    try:
        child.wait_listening([port])
    except BenchError:
        child.stop()
        raise
    return child, port


def _toml(value: str) -> str:
    # A TOML basic string accepts JSON's escapes for everything a path or UUID contains.
    return json.dumps(value)


def fixproxy_config(material: Material, gateway_port: int, accounts: Sequence[Account],
                    name: str) -> tuple[Path, Config]:
    """Write a fixproxy TOML file with one KalshiNR session per account; load it back."""
    lines = [
        "[gateway]",
        'host = "127.0.0.1"',
        f"server_name = {_toml(SERVER_NAME)}",
        f"ca_file = {_toml(str(material.certs.ca_cert))}",
        f"pins = [{_toml(material.leaf_pin)}]",
        'verify = "ca+pin"',
        "connect_timeout = 10.0",
        "",
        "[metrics]",
        f'listen = "127.0.0.1:{free_port()}"',
        "",
        # A directory of its own per process: it holds the pid file that finds the process
        # for a reload, and two proxies may not share one.
        "[proxy]",
        f"state_dir = {_toml(str(state_dir(material, name)))}",
    ]
    for index, account in enumerate(accounts):
        lines += [
            "",
            "[[session]]",
            f'name = "bench-{index}"',
            f'listen = "127.0.0.1:{free_port()}"',
            f"endpoint = {_toml(ENDPOINT)}",
            f"port = {gateway_port}",
            f"api_key = {_toml(account.api_key)}",
            f"private_key = {_toml(str(account.private_key))}",
        ]
    path = material.workdir / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, load_config(path)


def state_dir(material: Material, name: str) -> Path:
    """The ``[proxy] state_dir`` of the fixproxy process called ``name``."""
    return material.workdir / f"{name}-state"


def start_fixproxy(material: Material, gateway_port: int, accounts: Sequence[Account],
                   name: str, switch_interval: float | None = None) -> tuple[Child, Config]:
    """``python3 -m fixproxy.cli run`` with one session per account, once all listen.

    ``switch_interval`` reaches it as $FIXPROXY_SWITCH_INTERVAL (None: the environment's, or
    fixproxy's default).
    """
    path, config = fixproxy_config(material, gateway_port, accounts, name)
    env = {} if switch_interval is None else {ENV_SWITCH_INTERVAL: repr(switch_interval)}
    child = Child(name, [sys.executable, "-m", "fixproxy.cli", "run", "--config", str(path)],
                  material.workdir / f"{name}.log", env=env)
    ports = [session.listen[1] for session in config.sessions]
    if config.metrics.listen is not None:
        ports.append(config.metrics.listen[1])
    try:
        child.wait_listening(ports)
    except BenchError:
        child.stop()
        raise
    return child, config


@contextlib.contextmanager
def start_workers(material: Material) -> Iterator[tuple[Worker, Worker, int]]:
    """The benchmark's gateway and load engine, set up for ``material``'s accounts; both
    stopped on exit. Yields them and the gateway's port."""
    from bench.gateway import GatewaySpec

    spec_path = material.workdir / "gateway.json"
    GatewaySpec(material.certs.leaf_cert, material.certs.leaf_key,
                {account.api_key: account.public_key for account in material.accounts}
                ).dump(spec_path)
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(Worker("gateway", "bench.gateway", [str(spec_path)],
                                             material.workdir / "gateway.log"))
        first = gateway.read_line(30.0)
        if "port" not in first:
            raise BenchError(f"gateway: {first.get('error', first)}")
        engine = stack.enter_context(Worker("engine", "bench.engine", [],
                                            material.workdir / "engine.log"))
        engine.request("setup", timeout=30.0, ca=str(material.certs.ca_cert),
                       keys={account.api_key: str(account.private_key)
                             for account in material.accounts})
        yield gateway, engine, int(first["port"])
