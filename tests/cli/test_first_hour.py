"""What a new operator meets in the first hour: the commands' answers to the usual mistakes,
what ``run`` and ``demo`` say while they work, and the ``engine`` smoke test.

Each command runs as a real process (``python -m fixproxy.cli``): the point is what an operator
sees on the terminal, one line per expected problem and no traceback, and the exit code.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Final

import pytest
import trio
from click.testing import CliRunner
from support.e2e import E2EMaterial, ProxyPair, open_proxy_pair
from support.faults import wait_for_sample
from support.fleet import ProcessOutput
from support.reload_harness import Session, config_text, free_fixed_port, free_port

from fixproxy import __version__
from fixproxy.cli.main import main
from fixproxy.fix import tags
from fixproxy.sim.certs import generate_certificates
from fixproxy.sim.engine import ScriptedEngine

FIXPROXY: Final = [sys.executable, "-m", "fixproxy.cli"]
GUARD: Final = 60.0
"""Seconds one of these tests may take; each starts one or two Python processes."""


@contextmanager
def squatting() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        yield int(squatter.getsockname()[1])


async def fixproxy(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run a fixproxy command to its end."""
    with trio.fail_after(GUARD):
        return await trio.run_process([*FIXPROXY, *args], capture_stdout=True,
                                      capture_stderr=True, check=False)


def one_error_line(stderr: bytes) -> str:
    """The one line that says why a command failed: its last, after at most INFO log lines
    of what went well before; fails on a traceback or any other line."""
    text = stderr.decode()
    assert "Traceback" not in text, text
    *before, last = text.strip().splitlines()
    assert all(" INFO " in line for line in before), text
    return last


# --- check bind-tests the addresses run will listen on -----------------------------------


def _write_config(path: Path, material: E2EMaterial, *, listen_port: int, metrics: str,
                  gateway_port: int = 8228, pins: tuple[str, ...] | None = None) -> Path:
    text = config_text(material, gateway_port, path.parent / "state",
                       [Session("s", listen_port, key=material.api_key)], pins=pins)
    path.write_text(text.replace('listen = ""', f'listen = "{metrics}"'))
    return path


def test_check_bind_tests_every_listen_address_and_the_metrics_address(
        tmp_path: Path, e2e_material: E2EMaterial) -> None:
    with squatting() as session_port, squatting() as metrics_port:
        config = _write_config(tmp_path / "f.toml", e2e_material, listen_port=session_port,
                               metrics=f"127.0.0.1:{metrics_port}")
        result = CliRunner().invoke(main, ["check", "--offline", "--config", str(config)])
    assert result.exit_code == 1, result.output
    busy = "Address already in use (another process listens there: is fixproxy already running?)"
    assert (f"FAIL session 's' (KalshiNR): cannot listen on 127.0.0.1:{session_port}: {busy}"
            in result.output), result.output
    assert f"FAIL [metrics] listen: cannot listen on 127.0.0.1:{metrics_port}: {busy}" \
        in result.output
    assert "Traceback" not in result.output

    free_session, free_metrics = free_port(), free_port()
    config = _write_config(tmp_path / "g.toml", e2e_material, listen_port=free_session,
                           metrics=f"127.0.0.1:{free_metrics}")
    result = CliRunner().invoke(main, ["check", "--offline", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"ok   session 's' (KalshiNR): can listen on 127.0.0.1:{free_session}" in result.output
    assert f"ok   [metrics] listen: can listen on 127.0.0.1:{free_metrics}" in result.output


# --- busy ports everywhere are one line ----------------------------------------------------


@pytest.mark.parametrize("command", ["sim", "demo"])
async def test_a_busy_port_is_one_line_for_sim_and_demo(
        e2e_material: E2EMaterial, command: str) -> None:
    public = e2e_material.workdir / "keys" / "kalshi-fix.pub.pem"
    with squatting() as port:
        if command == "sim":
            args = ["sim", "--base-port", str(port), "--key",
                    f"{e2e_material.api_key}={public}"]
        else:
            args = ["demo", "--serve", "--port", str(port)]
        done = await fixproxy(*args)
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line.startswith("fixproxy: error: ")
    assert f"cannot listen on 127.0.0.1:{port}" in line, line
    assert line.endswith(": Address already in use"), line


# --- run: a banner, a stopped line, and one line per operator's problem --------------------


@asynccontextmanager
async def running(config: Path, *extra: str) -> AsyncIterator[tuple[trio.Process,
                                                                    ProcessOutput]]:
    """``fixproxy run`` as a process, its stderr read as it comes; ended at exit."""
    process = await trio.lowlevel.open_process([*FIXPROXY, "run", "--config", str(config),
                                                *extra],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    output = ProcessOutput(process.stderr)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(output.pump)
            with trio.fail_after(GUARD):
                await output.wait_for("listening on")
                yield process, output
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0, output.text
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_run_starts_with_a_banner_and_ends_with_a_stopped_line(
        tmp_path: Path, e2e_material: E2EMaterial) -> None:
    port = free_port()
    config = _write_config(tmp_path / "f.toml", e2e_material, listen_port=port, metrics="")
    async with running(config) as (process, output):
        pass
    lines = output.text.strip().splitlines()
    assert lines[0].endswith(
        f"INFO fixproxy.server fixproxy {__version__} starting: config {config}, pid "
        f"{process.pid}, 1 session(s): s (KalshiNR on 127.0.0.1:{port})"), lines[0]
    assert lines[-1].endswith(f"INFO fixproxy.server fixproxy stopped (pid {process.pid})"), \
        lines[-1]


@pytest.mark.parametrize("log_level", ["info", "debug"])
async def test_a_pin_mismatch_at_run_time_is_one_error_line(
        tmp_path: Path, e2e_material: E2EMaterial, nursery: trio.Nursery,
        log_level: str) -> None:
    async with open_proxy_pair(e2e_material) as pair:
        wrong = generate_certificates().leaf_pin
        port = free_port()
        config = _write_config(tmp_path / "f.toml", e2e_material, listen_port=port,
                               metrics="", gateway_port=pair.gateway[1], pins=(wrong,))
        async with running(config, "--log-level", log_level) as (_, output):
            engine = await ScriptedEngine.connect("127.0.0.1", port, sender=pair.api_key,
                                                  target="KalshiNR")
            answer = await engine.logon()
            assert answer is not None and answer.msg_type == tags.MT_LOGOUT
            assert "matches none of the configured pins" in (answer.get_str(tags.TEXT) or "")
            await engine.aclose()
            await output.wait_for("refused engine connection")
    errors = [line for line in output.text.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output.text
    assert f"presented pins ['{e2e_material.certs.leaf_pin}'" in errors[0]
    assert errors[0].endswith(f"; configured ['{wrong}']")
    # The traceback is there for whoever asks for debug, and only then.
    assert ("Traceback" in output.text) == (log_level == "debug"), output.text


async def test_an_unreachable_gateway_at_run_time_is_one_line(
        tmp_path: Path, e2e_material: E2EMaterial) -> None:
    port = free_port()
    config = _write_config(tmp_path / "f.toml", e2e_material, listen_port=port, metrics="",
                           gateway_port=free_port())  # nothing listens there
    async with running(config) as (_, output):
        engine = await ScriptedEngine.connect("127.0.0.1", port, sender=e2e_material.api_key,
                                              target="KalshiNR")
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT
        await engine.aclose()
        await output.wait_for("refused engine connection")
    assert "Traceback" not in output.text
    refused = [line for line in output.text.splitlines() if "refused engine connection" in line]
    assert len(refused) == 1
    assert " WARNING " in refused[0] and "could not open TLS to the Kalshi gateway" in refused[0]


# --- demo: info means info ---------------------------------------------------------------


async def test_demo_serve_logs_each_engine_connection() -> None:
    port = free_fixed_port()  # the demo's simulator binds port 0 beside it
    process = await trio.lowlevel.open_process(
        [*FIXPROXY, "demo", "--serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = ProcessOutput(process.stdout), ProcessOutput(process.stderr)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stdout.pump)
            nursery.start_soon(stderr.pump)
            with trio.fail_after(GUARD):
                await stdout.wait_for("Ctrl-C stops")
                api_key = stdout.text.split("SenderCompID=", 1)[1].split(",", 1)[0]
                engine = await ScriptedEngine.connect("127.0.0.1", port, sender=api_key,
                                                      target="KalshiNR")
                answer = await engine.logon()
                assert answer is not None and answer.msg_type == tags.MT_LOGON
                await stderr.wait_for("engine Logon accepted locally")
                await stderr.wait_for("gateway accepted the Logon")
                await engine.logout()
                await engine.aclose()
                process.terminate()
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert " INFO fixproxy.relay " in stderr.text


@pytest.mark.parametrize(("args", "info_lines"), [((), False), (("--log-level", "info"), True)],
                         ids=["default: warning", "info"])
async def test_demo_log_level_info_means_info(args: tuple[str, ...], info_lines: bool) -> None:
    done = await fixproxy("demo", "--orders", "1", *args)
    assert done.returncode == 0, done.stderr.decode()
    assert "Logon, signed" in done.stdout.decode()
    assert (" INFO " in done.stderr.decode()) == info_lines, done.stderr.decode()


# --- engine: the smoke test --------------------------------------------------------------


@pytest.fixture
async def pair(e2e_material: E2EMaterial) -> AsyncIterator[ProxyPair]:
    async with open_proxy_pair(e2e_material) as running_pair:
        yield running_pair


def _engine_args(pair: ProxyPair, *extra: str, target: str = "KalshiNR") -> list[str]:
    host, port = pair.proxy
    return ["engine", "--connect", f"{host}:{port}", "--sender", pair.api_key, "--target",
            target, *extra]


async def test_engine_logs_on_trades_tests_the_line_and_logs_out(pair: ProxyPair) -> None:
    done = await fixproxy(*_engine_args(pair, "--orders", "2"))
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    lines = out.splitlines()
    assert lines[0] == f"connected to {pair.proxy[0]}:{pair.proxy[1]} as {pair.api_key} -> " \
                       "KalshiNR"
    kinds = [line.split(":", 1)[0] for line in lines[1:-1]]
    assert kinds == [
        "engine -> Logon", "engine <- Logon", "engine -> NewOrderSingle",
        "engine -> NewOrderSingle", "engine <- ExecutionReport",
        "engine <- ExecutionReport", "engine -> TestRequest", "engine <- Heartbeat",
        "engine -> Logout", "engine <- Logout"]
    assert lines[-1].startswith("ok: Logon accepted, 2 of 2 order(s) answered")
    assert pair.sim.message_count(tags.MT_NEW_ORDER_SINGLE) == 2
    # A clean Logout is a normal end (counted as the relay's thread finishes).
    with trio.fail_after(GUARD):
        await wait_for_sample(pair, 1, "fixproxy_logouts_total", initiator="engine",
                              reason="normal")


async def test_engine_sends_no_order_unless_asked(pair: ProxyPair) -> None:
    done = await fixproxy(*_engine_args(pair))
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert "NewOrderSingle" not in done.stdout.decode()
    assert pair.sim.message_count(tags.MT_NEW_ORDER_SINGLE) == 0
    assert pair.sim.message_count(tags.MT_TEST_REQUEST, "in") == 1


async def test_engine_holds_the_session_heartbeating(pair: ProxyPair) -> None:
    done = await fixproxy(*_engine_args(pair, "--hold", "1.5"))
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert "held 1.5 s" in done.stdout.decode()


async def test_engine_exits_1_with_the_refusal_in_one_line(pair: ProxyPair) -> None:
    done = await fixproxy(*_engine_args(pair, target="KalshiRT"))
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line.startswith("fixproxy: error: the Logon was refused: fixproxy: TargetCompID (56)")
    assert "engine <- Logout" in done.stdout.decode()


async def test_engine_exits_1_when_nothing_listens() -> None:
    port = free_port()
    done = await fixproxy("engine", "--connect", f"127.0.0.1:{port}", "--sender",
                          "00000000-0000-0000-0000-000000000001", "--target", "KalshiNR")
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line.startswith(f"fixproxy: error: cannot connect to 127.0.0.1:{port}: ")
    assert line.endswith("is fixproxy running, and is this a session's listen address?")


def test_engine_refuses_a_malformed_address() -> None:
    result = CliRunner().invoke(main, ["engine", "--connect", "nowhere", "--sender", "k",
                                       "--target", "KalshiNR"])
    assert result.exit_code == 2
    assert "expected HOST:PORT" in result.output
