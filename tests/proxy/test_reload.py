"""Reloading the configuration: new connections get the new file, live sessions keep trading.

In-process runs drive :meth:`ProxyServer.reload` against the simulated gateway on real
loopback sockets; subprocess runs send a real SIGHUP to ``fixproxy run`` and use
``fixproxy reload``.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
import trio
from click.testing import CliRunner
from support.e2e import E2EMaterial
from support.fleet import ProcessOutput
from support.reload_harness import (
    KEYS,
    Session,
    config_text,
    free_port,
    refused,
    running,
    simulator,
    trades,
)

from fixproxy.cli.main import main
from fixproxy.errors import FixProxyError
from fixproxy.fix import tags
from fixproxy.ops.control import PID_FILE_NAME, PidFile, read_reload_record
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimGateway

FIXPROXY: Final = [sys.executable, "-m", "fixproxy.cli"]
PROCESS_GUARD: Final = 60.0
"""Seconds one subprocess test may take (interpreter start-up on a loaded machine)."""
WRONG_PIN: Final = "sha256/" + "A" * 43 + "="
"""A well-formed pin that no certificate has."""


# --- in-process -----------------------------------------------------------------------------


async def test_new_pins_apply_to_new_connections_while_a_live_session_trades(
        e2e_material: E2EMaterial, tmp_path: Path) -> None:
    sessions = [Session("a", free_port()), Session("b", free_port())]
    async with running(e2e_material, tmp_path, sessions) as harness:
        live = await harness.logged_on("a")
        await trades(live)
        old_runtime = harness.server.runtimes["a"]

        harness.write(sessions, pins=[WRONG_PIN])
        result = await harness.server.reload()
        assert result.ok, result
        assert result.changes is not None and result.changes.changed == ("a", "b")
        assert harness.server.runtimes["a"] is not old_runtime

        newcomer = await harness.engine("b")
        answer = await newcomer.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        assert "matches none of the configured pins" in (answer.get_str(tags.TEXT) or "")
        assert harness.metrics.registry.get_sample_value(
            "fixproxy_pin_mismatches_total", {"session": "b"}) == 1
        assert KEYS["b"] not in harness.sim.live_sessions

        await trades(live)  # the live session still uses the pins it connected with
        answer = await live.logout()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        assert (harness.reloads("ok"), harness.reloads("rejected")) == (1, 0)


async def test_an_invalid_file_is_rejected_whole_and_the_old_configuration_serves(
        e2e_material: E2EMaterial, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = Session("a", free_port())
    async with running(e2e_material, tmp_path, [a]) as harness:
        before = harness.server.runtimes["a"]
        config_before = harness.server.config

        # A key the loader does not know.
        harness.write([a], extra='colour = "red"')
        result = await harness.server.reload()
        assert result.result == "rejected"
        assert "proxy.colour" in result.detail
        errors = [record for record in caplog.records if record.levelno == logging.ERROR]
        assert len(errors) == 1
        assert errors[0].name == "fixproxy.reload"
        assert "rejected" in errors[0].getMessage()
        assert "proxy.colour" in errors[0].getMessage()

        # A valid file adding a session, but with a key the signer refuses: nothing of it
        # applies, not even the new session's listener.
        loose = tmp_path / "loose.key"
        loose.write_bytes(e2e_material.private_key.read_bytes())
        loose.chmod(0o644)
        b_port = free_port()
        harness.write([Session("a", a.port, private_key=loose), Session("b", b_port)])
        result = await harness.server.reload()
        assert result.result == "rejected"
        assert "session 'a'" in result.detail and "chmod 600" in result.detail
        assert "b" not in harness.server.addresses
        await refused(("127.0.0.1", b_port))

        # A listen address that cannot be bound (held here) rejects the file too.
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            taken = int(holder.getsockname()[1])
            harness.write([a, Session("b", taken)])
            result = await harness.server.reload()
        assert result.result == "rejected"
        assert "cannot listen" in result.detail

        assert harness.server.runtimes["a"] is before
        assert harness.server.config is config_before
        assert (harness.reloads("ok"), harness.reloads("rejected")) == (0, 3)
        live = await harness.logged_on("a")  # the old configuration still serves
        await trades(live)


async def test_settings_bound_at_start_keep_their_value_and_warn(
        e2e_material: E2EMaterial, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = Session("a", free_port())
    async with running(e2e_material, tmp_path, [a]) as harness:
        old = harness.server.config
        metrics_port = free_port()
        harness.path.write_text(
            config_text(e2e_material, harness.sim_port, tmp_path / "elsewhere", [a],
                        extra="shutdown_timeout = 3.0\n\n[backoff]\nfloor = 2.0")
            .replace('listen = ""', f'listen = "127.0.0.1:{metrics_port}"')
            .replace("enabled = false", 'days = ["daily"]\nstart = "01:00"\nend = "01:30"'))

        result = await harness.server.reload()
        assert result.ok, result
        assert result.changes is not None
        notes = result.changes.restart_needed
        assert sorted(note.split(" ", 2)[1] for note in notes) == ["floor", "listen",
                                                                  "state_dir"]
        new = harness.server.config
        assert new.metrics == old.metrics  # still no metrics endpoint
        assert new.proxy.state_dir == old.proxy.state_dir
        assert new.backoff == old.backoff
        assert new.proxy.shutdown_timeout == 3.0  # read when a drain starts: applies
        assert new.maintenance is not None
        assert harness.server.manager.maintenance == new.maintenance
        warnings = [record.getMessage() for record in caplog.records
                    if record.levelno == logging.WARNING and record.name == "fixproxy.reload"]
        assert len(warnings) == 3
        assert all("restarts" in warning for warning in warnings)
        await refused(("127.0.0.1", metrics_port))


async def test_a_reload_while_stopping_is_ignored(e2e_material: E2EMaterial,
                                                 tmp_path: Path) -> None:
    a = Session("a", free_port())
    async with running(e2e_material, tmp_path, [a]) as harness:
        harness.write([a, Session("b", free_port())])
        harness.server.stop_listening()
        result = await harness.server.reload()
        assert result.result == "ignored"
        assert "b" not in harness.server.runtimes
        assert (harness.reloads("ok"), harness.reloads("rejected")) == (0, 0)


# --- as a real process ----------------------------------------------------------------------


@dataclass
class Proc:
    process: trio.Process
    output: ProcessOutput
    path: Path
    state_dir: Path
    sim: SimGateway
    sim_port: int
    material: E2EMaterial
    engines: list[ScriptedEngine] = field(default_factory=list)

    def write(self, sessions: Sequence[Session]) -> None:
        self.path.write_text(config_text(self.material, self.sim_port, self.state_dir,
                                         sessions))

    async def logged_on(self, session: Session) -> ScriptedEngine:
        engine = await ScriptedEngine.connect("127.0.0.1", session.port,
                                              sender=session.api_key, target="KalshiNR")
        self.engines.append(engine)
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGON, answer
        return engine


@asynccontextmanager
async def fixproxy_run(material: E2EMaterial, tmp_path: Path,
                       sessions: Sequence[Session]) -> AsyncIterator[Proc]:
    sim = simulator(material)
    with trio.fail_after(PROCESS_GUARD):
        async with trio.open_nursery() as nursery:
            sim_port = (await nursery.start(sim.serve))["KalshiNR"][1]
            path = tmp_path / "fixproxy.toml"
            proc_state = tmp_path / "state"
            path.write_text(config_text(material, sim_port, proc_state, sessions))
            process = await trio.lowlevel.open_process(
                [*FIXPROXY, "run", "--config", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert process.stderr is not None
            output = ProcessOutput(process.stderr)
            nursery.start_soon(output.pump)
            proc = Proc(process, output, path, proc_state, sim, sim_port, material)
            try:
                await output.wait_for("listening on", len(sessions))
                yield proc
            finally:
                for engine in proc.engines:
                    await trio.aclose_forcefully(engine.stream)
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                nursery.cancel_scope.cancel()


async def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([*FIXPROXY, *args], capture_stdout=True,
                                  capture_stderr=True, check=False)


async def test_sighup_and_fixproxy_reload_against_a_running_process(
        e2e_material: E2EMaterial, tmp_path: Path) -> None:
    a, b = Session("a", free_port()), Session("b", free_port())
    async with fixproxy_run(e2e_material, tmp_path, [a]) as proc:
        live = await proc.logged_on(a)
        pid_path = proc.state_dir / PID_FILE_NAME
        assert pid_path.read_text() == f"{proc.process.pid}\n"
        with pytest.raises(FixProxyError, match="another fixproxy"):
            PidFile.claim(proc.state_dir)

        # SIGHUP: the added session listens and logs on; the live one keeps trading.
        proc.write([a, b])
        proc.process.send_signal(signal.SIGHUP)
        await proc.output.wait_for("configuration reloaded")
        added = await proc.logged_on(b)
        await trades(added)
        await trades(live)
        record = read_reload_record(proc.state_dir)
        assert record is not None
        assert (record.pid, record.serial, record.result) == (proc.process.pid, 1, "ok")

        # An invalid file is refused by the command before the process is disturbed.
        proc.path.write_text(proc.path.read_text() + "\n[nonsense]\n")
        result = await _cli("reload", "--config", str(proc.path))
        assert result.returncode == 1
        assert b"configuration error" in result.stderr and b"nonsense" in result.stderr
        assert read_reload_record(proc.state_dir) == record

        # A file that is valid here but that the process cannot apply: its answer is shown.
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            c = Session("c", int(holder.getsockname()[1]))
            proc.write([a, b, c])
            result = await _cli("reload", "--config", str(proc.path))
        assert result.returncode == 1, result
        assert b"rejected" in result.stderr and b"cannot listen" in result.stderr
        assert "configuration reload rejected" in proc.output.text

        # Removing a session: `fixproxy reload` reports it; the live session carries on.
        proc.write([b])
        result = await _cli("reload", "--config", str(proc.path))
        assert result.returncode == 0, result
        assert f"pid {proc.process.pid}) reloaded".encode() in result.stdout
        assert b"removed: a" in result.stdout
        await refused(("127.0.0.1", a.port))
        await trades(live)

        await live.logout()
        await added.logout()
        proc.process.send_signal(signal.SIGTERM)
        assert await proc.process.wait() == 0
        assert not pid_path.exists()
    result = await _cli("reload", "--config", str(proc.path))
    assert result.returncode == 1
    assert b"no running fixproxy" in result.stderr


class _Progress:
    """A count that tasks can wait on."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = trio.Event()

    def add(self) -> None:
        self.value += 1
        self._changed.set()
        self._changed = trio.Event()

    async def at_least(self, value: int) -> None:
        while self.value < value:
            await self._changed.wait()


async def test_sighup_under_load_loses_no_order(e2e_material: E2EMaterial,
                                                tmp_path: Path) -> None:
    a, b = Session("a", free_port()), Session("b", free_port())
    window = 20  # orders in flight at once
    async with fixproxy_run(e2e_material, tmp_path, [a]) as proc:
        engine = await proc.logged_on(a)
        sent: list[bytes] = []
        reports: list[bytes] = []
        received = _Progress()
        reloads_done = trio.Event()
        credit_in, credit_out = trio.open_memory_channel[None](window)

        async def send_orders() -> None:
            # Orders keep flowing until both reloads are over, so each happens mid-stream.
            while not (reloads_done.is_set() and len(sent) >= 200):
                await credit_in.send(None)
                sent.append(await engine.new_order())

        async def receive_reports() -> None:
            while True:
                message = await engine.receive()
                assert message is not None, "the session ended during the reloads"
                if message.msg_type == tags.MT_EXECUTION_REPORT:
                    reports.append(message.get(11) or b"")
                    credit_out.receive_nowait()
                    received.add()

        async def reload_twice() -> None:
            for count, sessions in ((1, [a, b]), (2, [a])):
                await received.at_least(received.value + 30)
                proc.write(sessions)
                proc.process.send_signal(signal.SIGHUP)
                await proc.output.wait_for("configuration reloaded", count)
            reloads_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_reports)
            nursery.start_soon(reload_twice)
            await send_orders()
            await received.at_least(len(sent))
            nursery.cancel_scope.cancel()

        assert reports == sent
        assert proc.sim.message_count(tags.MT_NEW_ORDER_SINGLE) == len(sent)
        assert "rejected" not in proc.output.text
        answer = await engine.logout()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        proc.process.send_signal(signal.SIGTERM)
        assert await proc.process.wait() == 0


def test_the_reload_command_is_listed() -> None:
    result = CliRunner().invoke(main, ["reload", "--help"])
    assert result.exit_code == 0
    assert "SIGHUP" in result.output


def test_the_reload_command_leaves_a_key_it_cannot_unlock_here_to_the_server(
        e2e_material: E2EMaterial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIXPROXY_TEST_PASSPHRASE", raising=False)
    path = tmp_path / "f.toml"
    path.write_text(config_text(e2e_material, 8228, tmp_path / "state", [Session("a", 19001)])
                    + 'private_key_passphrase_env = "FIXPROXY_TEST_PASSPHRASE"\n')
    result = CliRunner().invoke(main, ["reload", "--config", str(path)])
    assert result.exit_code == 1
    assert "$FIXPROXY_TEST_PASSPHRASE (the key's passphrase) is not set" in result.output
    assert "no running fixproxy found" in result.output  # it went on to look for the server
    assert "configuration error" not in result.output
