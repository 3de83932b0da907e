"""Two network namespaces joined by a veth link: a real network between fixproxy and a gateway.

Theory of operation
-------------------
Faults that live in the kernel (a link that stops carrying packets with no FIN or RST, a
peer that reboots while the link is down, a small MTU) cannot be staged on loopback: loopback
never loses a packet. :func:`veth_pair` makes two namespaces of the test's own, ``gw`` for the
gateway and ``px`` for fixproxy and its engine, joined by one veth pair with a /30 of private
addresses (each end's address exists only inside its namespace), and ``lo`` up in both, so
each namespace also has a 127.0.0.1 of its own. A process runs inside a namespace with ``ip
netns exec``; the test's own code reaches a namespace through sockets made there
(:meth:`NetPair.socket`): a socket belongs to the namespace it was created in, whichever
thread uses it later, so a short-lived thread enters the namespace with ``setns(2)``, makes
the socket and returns to the process's own namespace before it ends.

Everything is undone at the end, also when the test fails: processes started through the pair
are killed, and deleting a namespace takes its veth end, and so the pair, with it.

Without root or ``ip`` the tests skip with the reason; with ``FIXPROXY_REQUIRE_NETNS=1`` (set
by CI) they fail instead, so the real-fault tests can never be skipped silently there.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import pytest

CLONE_NEWNET: Final = 0x40000000
REQUIRE_ENV: Final = "FIXPROXY_REQUIRE_NETNS"
_names = itertools.count(1)


def require_root(what: str) -> None:
    """Skip (or, under FIXPROXY_REQUIRE_NETNS=1, fail) unless this process can do ``what``."""
    reason = None
    if os.geteuid() != 0:
        reason = f"{what} needs root"
    elif shutil.which("ip") is None:
        reason = f"{what} needs iproute2's ip command"
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 forbids skipping")
    pytest.skip(reason)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _enter(libc: ctypes.CDLL, fd: int) -> None:
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@dataclass
class NetPair:
    """Two namespaces (``gw``, ``px``) joined by a veth pair; see the module's docstring."""

    gw: str
    px: str
    gw_link: str
    px_link: str
    gw_address: str
    px_address: str
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, namespace: str, argv: Sequence[str], log_name: str,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``namespace``, stdout and stderr to ``workdir/log_name``."""
        log: IO[bytes] = (self.workdir / log_name).open("ab")
        with log:
            process = subprocess.Popen(["ip", "netns", "exec", namespace, *argv],
                                       stdout=log, stderr=subprocess.STDOUT,
                                       cwd=cwd or self.workdir)
        self.processes.append(process)
        return process

    def log_text(self, log_name: str) -> str:
        """What a process started with ``log_name`` has written so far."""
        path = self.workdir / log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def link(self, up: bool) -> None:
        """Take the gateway's end of the link down (no FIN, no RST: packets just stop) or up."""
        _ip("-n", self.gw, "link", "set", self.gw_link, "up" if up else "down")

    def set_mtu(self, mtu: int) -> None:
        """Set the MTU of both ends of the link."""
        _ip("-n", self.gw, "link", "set", self.gw_link, "mtu", str(mtu))
        _ip("-n", self.px, "link", "set", self.px_link, "mtu", str(mtu))

    def run(self, namespace: str, argv: Sequence[str]) -> str:
        """Run a short command inside ``namespace`` and return its output."""
        done = subprocess.run(["ip", "netns", "exec", namespace, *argv], capture_output=True,
                              text=True, timeout=10, check=True)
        return done.stdout

    def socket(self, namespace: str, family: int = socket.AF_INET,
               kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A new socket that lives in ``namespace``, made by a thread that visits it."""
        made: list[socket.socket] = []
        failed: list[BaseException] = []

        def visit() -> None:
            libc = _libc()
            with open("/proc/self/ns/net", "rb") as home, \
                    open(f"/var/run/netns/{namespace}", "rb") as there:
                _enter(libc, there.fileno())
                try:
                    made.append(socket.socket(family, kind))
                except BaseException as exc:
                    failed.append(exc)
                finally:
                    _enter(libc, home.fileno())

        thread = threading.Thread(target=visit, name=f"netns-{namespace}")
        thread.start()
        thread.join(10)
        if failed:
            raise failed[0]
        if not made:
            raise RuntimeError(f"could not make a socket in namespace {namespace}")
        return made[0]

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 10) -> None:
        """Stop a process started here, by ``sig``, then SIGKILL if it lingers."""
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)


@contextlib.contextmanager
def veth_pair(workdir: Path) -> Iterator[NetPair]:
    """Make the two namespaces and their link; undo all of it on the way out."""
    require_root("a network-namespace test")
    n = next(_names)
    tag = f"{os.getpid() % 100000}-{n}"
    subnet = f"10.231.{(os.getpid() + n) % 250}"
    pair = NetPair(gw=f"fxp-gw-{tag}", px=f"fxp-px-{tag}", gw_link="veth-gw",
                   px_link="veth-px", gw_address=f"{subnet}.1", px_address=f"{subnet}.2",
                   workdir=workdir)
    made: list[str] = []
    try:
        for namespace in (pair.gw, pair.px):
            _ip("netns", "add", namespace)
            made.append(namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        # Both ends are created inside the gateway's namespace, then one is moved: no
        # interface ever appears in the namespace the tests run in.
        _ip("-n", pair.gw, "link", "add", pair.gw_link, "type", "veth", "peer", "name",
            pair.px_link)
        _ip("-n", pair.gw, "link", "set", pair.px_link, "netns", pair.px)
        for namespace, link, address in ((pair.gw, pair.gw_link, pair.gw_address),
                                         (pair.px, pair.px_link, pair.px_address)):
            _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", link)
            _ip("-n", namespace, "link", "set", link, "up")
        yield pair
    finally:
        for process in pair.processes:
            if process.poll() is None:
                # A stopped process must be continued to die of SIGKILL's cleanup promptly.
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for namespace in made:
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", namespace)
