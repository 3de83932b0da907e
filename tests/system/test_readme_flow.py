"""The README's "Trying it against the simulator", run as written.

The commands are read from the README itself, so the README and the product cannot drift
apart: a key from ``keygen``, the simulator writing its certificate and a configuration,
``check``, ``run`` and the ``engine`` smoke test, each a real process in a fresh directory.
Two things differ from a person at a terminal, both because other tests on this machine may
hold fixed ports: the simulator binds ephemeral ports (``--base-port 0``), and the session's
and the metrics endpoint's listen addresses in the written configuration are moved to free
ports. The simulator is then restarted under a running fixproxy, which must keep trading
(the certificate is kept in ``--cert-out``), and QuickFIX trades through it with the shipped
settings file.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
import trio
from support.fleet import ProcessOutput
from support.quickfix_engine import EngineSettings, QuickFixEngine
from support.reload_harness import free_port

from fixproxy.fix import tags

ROOT: Final = Path(__file__).resolve().parents[2]
README: Final = ROOT / "README.md"
SECTION: Final = "## Trying it against the simulator"
FIXPROXY: Final = [sys.executable, "-m", "fixproxy.cli"]
GUARD: Final = 90.0
"""Seconds the whole flow may take; it starts about ten Python processes."""
STEP_TIMEOUT: Final = 15.0


def readme_commands() -> list[str]:
    """The shell commands of the README's simulator section, comments dropped."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text[start:end], re.DOTALL):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


def fixproxy_args(command: str, api_key: str) -> list[str]:
    """A README ``fixproxy ...`` line as arguments, ``$API_KEY`` filled in."""
    words = shlex.split(command.replace("$API_KEY", api_key))
    assert words[0] == "fixproxy", command
    return words[1:]


@dataclass
class Flow:
    """The README's processes, run in ``workdir``."""

    workdir: Path
    api_key: str
    commands: dict[str, list[str]]
    """First word after ``fixproxy`` -> that README command's arguments."""
    listen_port: int = 0

    async def run(self, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(STEP_TIMEOUT):
            return await trio.run_process([*FIXPROXY, *args], cwd=self.workdir,
                                          capture_stdout=True, capture_stderr=True,
                                          check=False)

    def engine_args(self, *extra: str) -> list[str]:
        args = [arg.replace("127.0.0.1:9878", f"127.0.0.1:{self.listen_port}")
                for arg in self.commands["engine"]]
        return [*args, *extra]


class Background:
    """A long-running README command (``sim``, ``run``) as a process, its output read as it
    comes; :meth:`stop` ends it with SIGTERM: ``run`` must log out and exit 0, the simulator
    may simply end by the signal."""

    def __init__(self, flow: Flow, args: list[str], *, stream: str,
                 exits: tuple[int, ...] = (0,)) -> None:
        self.flow = flow
        self.args = args
        self.stream = stream
        self.exits = exits
        self.process: trio.Process | None = None
        self.output: ProcessOutput | None = None

    async def start(self, nursery: trio.Nursery, ready: str) -> ProcessOutput:
        pipe_out = subprocess.PIPE if self.stream == "stdout" else subprocess.DEVNULL
        pipe_err = subprocess.PIPE if self.stream == "stderr" else subprocess.DEVNULL
        self.process = await trio.lowlevel.open_process(
            [*FIXPROXY, *self.args], cwd=self.flow.workdir, stdout=pipe_out, stderr=pipe_err)
        pipe = self.process.stdout if self.stream == "stdout" else self.process.stderr
        assert pipe is not None
        self.output = ProcessOutput(pipe)
        nursery.start_soon(self.output.pump)
        with trio.fail_after(STEP_TIMEOUT):
            await self.output.wait_for(ready)
        return self.output

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        with trio.fail_after(STEP_TIMEOUT):
            assert await process.wait() in self.exits, self.output.text if self.output else ""

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports."""
    for _ in range(50):
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    pytest.fail(f"no {count} consecutive free ports")


@asynccontextmanager
async def readme_flow(workdir: Path) -> AsyncIterator[tuple[Flow, Background]]:
    """keygen, sim, check and run as the README says; yields with the simulator and fixproxy
    running (the simulator's handle, to restart it), and stops both at the end."""
    commands = readme_commands()
    names = [shlex.split(command)[1] if command.startswith("fixproxy") else command.split()[0]
             for command in commands]
    assert names == ["keygen", "export", "sim", "check", "run", "engine"], commands
    api_key = str(uuid.uuid4())
    assert commands[1].startswith("export API_KEY=")
    await trio.Path(workdir).mkdir(parents=True, exist_ok=True)
    flow = Flow(workdir, api_key, {name: fixproxy_args(command, api_key)
                                   for name, command in zip(names, commands, strict=True)
                                   if name != "export"})

    keygen = await flow.run(flow.commands["keygen"])
    assert keygen.returncode == 0, keygen.stderr.decode()
    sim = Background(flow, [*flow.commands["sim"], "--base-port", str(free_port_range(6))],
                     stream="stdout", exits=(0, -signal.SIGTERM))
    run = Background(flow, flow.commands["run"], stream="stderr")
    try:
        async with trio.open_nursery() as nursery:
            sim_output = await sim.start(nursery, "Ctrl-C stops")
            assert "new certificate written to sim-certs" in sim_output.text
            config = workdir / "sim.toml"
            flow.listen_port = free_port()
            text = config.read_text(encoding="utf-8")
            assert 'listen = "127.0.0.1:9878"' in text and 'listen = "127.0.0.1:9464"' in text
            config.write_text(text.replace("127.0.0.1:9878", f"127.0.0.1:{flow.listen_port}")
                                  .replace("127.0.0.1:9464", f"127.0.0.1:{free_port()}"))
            check = await flow.run(flow.commands["check"])
            out = check.stdout.decode()
            assert check.returncode == 0, out + check.stderr.decode()
            assert "ok   session 'order-entry' (KalshiNR): TLS to 127.0.0.1" in out, out
            await run.start(nursery, "listening on")
            yield flow, sim
            await run.stop()
            await sim.stop()
    finally:
        run.kill()
        sim.kill()


async def test_the_readme_flow_from_keygen_to_the_smoke_test(tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        async with readme_flow(tmp_path) as (flow, _):
            smoke = await flow.run(flow.engine_args())
            out = smoke.stdout.decode()
            assert smoke.returncode == 0, out + smoke.stderr.decode()
            assert "NewOrderSingle" not in out
            assert out.splitlines()[-1].startswith("ok: Logon accepted, 0 of 0 order(s)")

            trading = await flow.run(flow.engine_args("--orders", "3"))
            out = trading.stdout.decode()
            assert trading.returncode == 0, out + trading.stderr.decode()
            assert out.count("engine <- ExecutionReport") == 3


async def test_a_restarted_simulator_keeps_the_certificate_fixproxy_pinned(
        tmp_path: Path) -> None:
    with trio.fail_after(GUARD):
        async with readme_flow(tmp_path) as (flow, sim), trio.open_nursery() as nursery:
            await sim.stop()
            restarted = await sim.start(nursery, "Ctrl-C stops")
            assert "certificate kept from sim-certs" in restarted.text
            # The same fixproxy, never reloaded, still trusts and pins what it is shown.
            smoke = await flow.run(flow.engine_args())
            assert smoke.returncode == 0, smoke.stdout.decode() + smoke.stderr.decode()
            await sim.stop()  # its output pump is in this block's nursery


def _trade_with_quickfix(settings: EngineSettings) -> int:
    """Blocking: log on with the shipped settings, trade two orders, log out."""
    with QuickFixEngine(settings) as engine:
        assert engine.wait_logged_on(STEP_TIMEOUT), "QuickFIX never reached onLogon"
        for n in range(2):
            engine.send_limit_order(f"QF-{n}", symbol="HIGHNY-23DEC31", side_buy=True,
                                    price=0.5, quantity=1)
        assert engine.record.wait_until(
            lambda r: len(r.received_of(tags.MT_EXECUTION_REPORT)) >= 2, STEP_TIMEOUT)
        engine.logout("done")
        assert engine.wait_logged_out(STEP_TIMEOUT), "QuickFIX never reached onLogout"
        return len(engine.record.received_of(tags.MT_EXECUTION_REPORT))


@pytest.mark.interop
async def test_quickfix_trades_through_the_readme_setup(tmp_path: Path) -> None:
    try:
        import quickfix  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"QuickFIX must be installed in CI (pip install '.[interop]'): {exc}")
        pytest.skip("QuickFIX is not installed: pip install '.[interop]'")
    with trio.fail_after(GUARD):
        async with readme_flow(tmp_path / "checkout") as (flow, _):
            settings = EngineSettings(sender_comp_id=flow.api_key, target_comp_id="KalshiNR",
                                      port=flow.listen_port, workdir=tmp_path / "quickfix")
            reports = await trio.to_thread.run_sync(_trade_with_quickfix, settings)
    assert reports == 2
