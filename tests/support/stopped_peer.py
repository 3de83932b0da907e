"""Real processes for the stopped-peer tests: fixproxy (``python3 -m fixproxy.cli run``), one
or more simulated gateways and load engines (:mod:`support.stopped_peer_procs`), each a process
of its own so that a test can SIGSTOP and SIGCONT it.

:class:`Stack` starts them and stops every one of them when it closes, continuing a stopped
process first so that its SIGTERM is delivered. The peers report through JSON-lines files
(:meth:`Peer.lines`); :meth:`Stack.wait` polls them, and fixproxy's resident set size, until a
condition holds or a bound passes. The certificates, keys and the process handling are the
benchmark's (:mod:`bench.middle`, :mod:`bench.proc`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.middle import Account, Material, make_material, state_dir
from bench.proc import REPO_ROOT, Child, free_port, memory_kib

LOOPBACK: Final = "127.0.0.1"
POLL_S: Final = 0.05
START_TIMEOUT_S: Final = 30.0
"""Starting a Python process on a loaded two-core machine can take seconds."""
_PROCS: Final = "support.stopped_peer_procs"
_ENV: Final = {"PYTHONPATH": str(REPO_ROOT / "tests")}


@dataclass(slots=True)
class Peer:
    """A gateway or engine process and the file it reports to."""

    child: Child
    out: Path
    _lines: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0

    def lines(self) -> list[dict[str, Any]]:
        """Every complete line so far (read on from where the last call stopped)."""
        try:
            with self.out.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._lines.extend(json.loads(line) for line in data[:end].splitlines() if line)
        self._offset += end
        return list(self._lines)

    def stop_signal(self) -> None:
        os.kill(self.child.pid, signal.SIGSTOP)

    def cont_signal(self) -> None:
        os.kill(self.child.pid, signal.SIGCONT)


@dataclass(slots=True)
class Stack:
    """The processes of one test, stopped when the test ends."""

    material: Material
    workdir: Path
    children: list[Child] = field(default_factory=list)
    fixproxy: Child | None = None
    rss_peak_kib: int = 0

    def _start(self, child: Child) -> Child:
        self.children.append(child)
        return child

    def gateway(self, name: str, accounts: Sequence[Account]) -> tuple[Peer, int]:
        """A simulated KalshiNR gateway for ``accounts``; returns it and its port."""
        out = self.workdir / f"{name}.jsonl"
        keys = [arg for account in accounts
                for arg in ("--key", f"{account.api_key}={account.public_key}")]
        certs = self.material.certs
        child = self._start(Child(name, [sys.executable, "-m", _PROCS, "gateway", "--out",
                                         str(out), "--cert", str(certs.leaf_cert),
                                         "--cert-key", str(certs.leaf_key), *keys],
                                  self.workdir / f"{name}.log", env=_ENV))
        peer = Peer(child, out)
        self.wait(lambda: bool(peer.lines()), START_TIMEOUT_S, f"{name} to listen")
        return peer, int(peer.lines()[0]["port"])

    def start_fixproxy(self, sessions: Sequence[tuple[Account, int]], *,
                       liveness_grace: float) -> list[int]:
        """fixproxy with one KalshiNR session per (account, gateway port); returns the
        sessions' listen ports once all listen."""
        listen = [free_port() for _ in sessions]
        certs = self.material
        lines = ["[gateway]", 'host = "127.0.0.1"', 'server_name = "localhost"',
                 f"ca_file = {json.dumps(str(certs.certs.ca_cert))}",
                 f"pins = [{json.dumps(certs.leaf_pin)}]", 'verify = "ca+pin"',
                 "connect_timeout = 10.0", "", "[proxy]",
                 f"state_dir = {json.dumps(str(state_dir(self.material, 'fixproxy')))}"]
        for index, ((account, port), listen_port) in enumerate(zip(sessions, listen,
                                                                   strict=True)):
            lines += ["", "[[session]]", f'name = "s{index}"',
                      f'listen = "127.0.0.1:{listen_port}"', 'endpoint = "KalshiNR"',
                      f"port = {port}", f"api_key = {json.dumps(account.api_key)}",
                      f"private_key = {json.dumps(str(account.private_key))}",
                      f"liveness_grace = {liveness_grace!r}"]
        path = self.workdir / "fixproxy.toml"
        path.write_text("\n".join(lines) + "\n")
        child = self._start(Child("fixproxy", [sys.executable, "-m", "fixproxy.cli", "run",
                                               "--config", str(path)],
                                  self.workdir / "fixproxy.log"))
        self.fixproxy = child
        child.wait_listening(listen, START_TIMEOUT_S)
        return listen

    def engine(self, name: str, port: int, account: Account, *, window: int = 0) -> Peer:
        """A load engine on fixproxy's listener ``port``, once it has logged on."""
        out = self.workdir / f"{name}.jsonl"
        child = self._start(Child(name, [sys.executable, "-m", _PROCS, "engine", "--out",
                                         str(out), "--port", str(port), "--sender",
                                         account.api_key, "--window", str(window)],
                                  self.workdir / f"{name}.log", env=_ENV))
        peer = Peer(child, out)
        self.wait(lambda: any(line.get("e") == "logon" for line in peer.lines()),
                  START_TIMEOUT_S, f"{name} to log on")
        return peer

    def rss_kib(self) -> int:
        """fixproxy's resident set size now, in KiB (also kept in :attr:`rss_peak_kib`)."""
        assert self.fixproxy is not None
        rss = memory_kib(self.fixproxy.pid)["VmRSS"]
        self.rss_peak_kib = max(self.rss_peak_kib, rss)
        return rss

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``done`` (and fixproxy's RSS) until it holds; returns the moment it did.

        Fails the test, with the end of every log, when ``timeout`` passes first or a
        process exited.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.fixproxy is not None:
                self.rss_kib()
            if done():
                return time.monotonic()
            for child in self.children:
                if child.process.poll() is not None and child.name == "fixproxy":
                    raise AssertionError(str(child.failure(f"exited while waiting for {what}")))
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout:g} s\n" + self.logs())
            time.sleep(POLL_S)

    def sample_rss(self, seconds: float) -> int:
        """The largest RSS seen over ``seconds`` of sampling."""
        end = time.monotonic() + seconds
        peak = 0
        while time.monotonic() < end:
            peak = max(peak, self.rss_kib())
            time.sleep(POLL_S)
        return peak

    def fixproxy_log(self) -> str:
        assert self.fixproxy is not None
        return self.fixproxy.log.read_text(errors="replace")

    def logs(self) -> str:
        parts = []
        for child in self.children:
            with contextlib.suppress(OSError):
                tail = child.log.read_text(errors="replace").splitlines()[-15:]
                if tail:
                    parts.append(f"--- {child.name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def close(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGCONT)
            child.stop()


@contextlib.contextmanager
def open_stack(workdir: Path, accounts: int) -> Iterator[Stack]:
    """Certificates and ``accounts`` keys in ``workdir``; every process started through the
    stack is stopped on the way out, failed test or not."""
    stack = Stack(make_material(workdir, accounts), workdir)
    try:
        yield stack
    finally:
        stack.close()


def first(lines: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The first line whose fields include ``match``."""
    for line in lines:
        if all(line.get(key) == value for key, value in match.items()):
            return line
    return None
