"""The command line, through click's CliRunner and as real subprocesses."""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from fixproxy.cli.main import main
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage
from fixproxy.signing import generate_key_pair, load_public_key
from fixproxy.sim.certs import SimCertificates, generate_certificates
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimConfig, SimGateway

FIXPROXY = [sys.executable, "-m", "fixproxy.cli"]


@pytest.fixture(scope="module")
def certs() -> SimCertificates:
    return generate_certificates("localhost")


@dataclass(frozen=True)
class Setup:
    config: Path
    api_key: str
    key_path: Path
    certs: SimCertificates
    sim: SimGateway
    gateway_port: int
    listen_port: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(path: Path, *, api_key: str, key_path: Path, ca_file: Path, pin: str,
                  gateway_port: int, listen_port: int) -> Path:
    path.write_text(f"""
[gateway]
host = "127.0.0.1"
server_name = "localhost"
ca_file = "{ca_file}"
pins = ["{pin}"]
connect_timeout = 5.0

[metrics]
listen = ""

[[session]]
name = "cli-test"
listen = "127.0.0.1:{listen_port}"
endpoint = "KalshiNR"
port = {gateway_port}
api_key = "{api_key}"
private_key = "{key_path}"
""")
    return path


@pytest.fixture
async def setup(tmp_path: Path, certs: SimCertificates,
                nursery: trio.Nursery) -> AsyncIterator[Setup]:
    key_path, pub_path = generate_key_pair(tmp_path / "keys")
    api_key = str(uuid.uuid4())
    files = certs.write(tmp_path / "certs")
    sim = SimGateway(SimConfig(ports={"KalshiNR": 0},
                               keys={api_key: load_public_key(pub_path)}),
                     certs.server_context())
    bound = await nursery.start(sim.serve)
    port = bound["KalshiNR"][1]
    listen_port = _free_port()
    config = _write_config(tmp_path / "fixproxy.toml", api_key=api_key, key_path=key_path,
                           ca_file=files.ca_cert, pin=certs.leaf_pin, gateway_port=port,
                           listen_port=listen_port)
    yield Setup(config, api_key, key_path, certs, sim, port, listen_port)


async def _fixproxy(*args: str, check: bool = False) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process([*FIXPROXY, *args], capture_stdout=True,
                                      capture_stderr=True, check=check)


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "check", "demo", "pin", "keygen", "sim", "engine"):
        assert command in result.output


def test_keygen_writes_a_private_pair_and_never_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["keygen", "--out", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    key = tmp_path / "keys" / "kalshi-fix.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in key.read_bytes()
    assert b"BEGIN PUBLIC KEY" in (tmp_path / "keys" / "kalshi-fix.pub.pem").read_bytes()
    again = runner.invoke(main, ["keygen", "--out", str(tmp_path / "keys")])
    assert again.exit_code == 1
    assert "refusing to overwrite" in again.output


def test_check_without_a_config_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIXPROXY_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["check", "--offline"])
    assert result.exit_code == 2
    assert "FIXPROXY_CONFIG" in result.output


def test_check_offline_reads_the_config_from_the_environment(
        tmp_path: Path, certs: SimCertificates, monkeypatch: pytest.MonkeyPatch) -> None:
    key_path, _ = generate_key_pair(tmp_path / "keys")
    files = certs.write(tmp_path / "certs")
    config = _write_config(tmp_path / "f.toml", api_key=str(uuid.uuid4()), key_path=key_path,
                           ca_file=files.ca_cert, pin=certs.leaf_pin, gateway_port=8228,
                           listen_port=19878)
    monkeypatch.setenv("FIXPROXY_CONFIG", str(config))
    result = CliRunner().invoke(main, ["check", "--offline"])
    assert result.exit_code == 0, result.output
    assert "ok   session 'cli-test'" in result.output


def test_check_refuses_a_key_readable_by_others(tmp_path: Path,
                                                certs: SimCertificates) -> None:
    key_path, _ = generate_key_pair(tmp_path / "keys")
    key_path.chmod(0o644)
    files = certs.write(tmp_path / "certs")
    config = _write_config(tmp_path / "f.toml", api_key=str(uuid.uuid4()), key_path=key_path,
                           ca_file=files.ca_cert, pin=certs.leaf_pin, gateway_port=8228,
                           listen_port=19878)
    result = CliRunner().invoke(main, ["check", "--offline", "--config", str(config)])
    assert result.exit_code == 1
    assert f"chmod 600 {key_path}" in result.output


def test_check_reports_a_config_error_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[gateway]\nverify = "none"\n')
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 1
    assert "gateway.verify" in result.output
    assert ":2" in result.output


@pytest.mark.parametrize(("env", "expected"), [(None, 0.0005), ("0.002", 0.002)])
def test_run_sets_the_switch_interval_before_the_event_loop(
        tmp_path: Path, certs: SimCertificates, monkeypatch: pytest.MonkeyPatch,
        env: str | None, expected: float) -> None:
    from fixproxy.proxy import server

    key_path, _ = generate_key_pair(tmp_path / "keys")
    files = certs.write(tmp_path / "certs")
    config = _write_config(tmp_path / "f.toml", api_key=str(uuid.uuid4()), key_path=key_path,
                           ca_file=files.ca_cert, pin=certs.leaf_pin, gateway_port=8228,
                           listen_port=19878)
    if env is None:
        monkeypatch.delenv("FIXPROXY_SWITCH_INTERVAL", raising=False)
    else:
        monkeypatch.setenv("FIXPROXY_SWITCH_INTERVAL", env)
    seen: list[float] = []

    async def fake_run_until_signal(*args: object) -> None:
        seen.append(sys.getswitchinterval())

    monkeypatch.setattr(server, "run_until_signal", fake_run_until_signal)
    before = sys.getswitchinterval()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(main, ["run", "--config", str(config)])
    finally:
        sys.setswitchinterval(before)
        root.handlers[:] = handlers  # run installs its log handler on the root logger
        root.setLevel(level)
    assert result.exit_code == 0, result.output
    assert seen == [pytest.approx(expected)]


@pytest.mark.parametrize("env", ["fast", "0", "-1", "inf", "nan"])
def test_run_refuses_a_switch_interval_that_is_not_a_positive_number(
        monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("FIXPROXY_SWITCH_INTERVAL", env)
    before = sys.getswitchinterval()
    result = CliRunner().invoke(main, ["run", "--config", "/nonexistent.toml"])
    assert result.exit_code == 2
    assert "$FIXPROXY_SWITCH_INTERVAL must be a positive number of seconds" in result.output
    assert sys.getswitchinterval() == before


async def test_check_online_passes_tls_and_pins(setup: Setup) -> None:
    result = await _fixproxy("check", "--config", str(setup.config))
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "TLS to 127.0.0.1" in out


async def test_check_online_fails_on_a_pin_mismatch(setup: Setup, tmp_path: Path) -> None:
    other = generate_certificates("localhost")
    text = setup.config.read_text().replace(setup.certs.leaf_pin, other.leaf_pin)
    config = tmp_path / "mismatch.toml"
    config.write_text(text)
    result = await _fixproxy("check", "--config", str(config))
    out = result.stdout.decode()
    assert result.returncode == 1
    assert "FAIL" in out
    assert setup.certs.leaf_pin in out  # the pin actually presented, to update the config


async def test_pin_prints_the_chain_and_saves_the_leaf(setup: Setup, tmp_path: Path) -> None:
    saved = tmp_path / "leaf.pem"
    result = await _fixproxy("pin", f"127.0.0.1:{setup.gateway_port}", "--server-name",
                             "localhost", "--save", str(saved), check=True)
    out = result.stdout.decode()
    assert setup.certs.leaf_pin in out
    assert "pins = [" in out
    assert saved.read_bytes().strip() == setup.certs.leaf_cert_pem.strip()


@asynccontextmanager
async def _running_fixproxy(setup: Setup) -> AsyncIterator[tuple[trio.Process, ScriptedEngine]]:
    """``fixproxy run`` as a real process, and an engine logged on through it."""
    process = await trio.lowlevel.open_process(
        [*FIXPROXY, "run", "--config", str(setup.config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(30):
            assert process.stderr is not None
            await _wait_for_output(process.stderr, b"listening on")
            engine = await ScriptedEngine.connect("127.0.0.1", setup.listen_port,
                                                  sender=setup.api_key, target="KalshiNR")
            answer = await engine.logon()
            assert answer is not None and answer.msg_type == tags.MT_LOGON
            yield process, engine
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_run_relays_an_engine_and_exits_zero_on_sigterm(setup: Setup) -> None:
    async with _running_fixproxy(setup) as (process, engine):
        await engine.new_order()
        report = await engine.receive_type(tags.MT_EXECUTION_REPORT)
        assert report.get(11) == b"demo-1"
        await engine.logout()
        await engine.aclose()
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0


async def _wait_for_output(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    """Read a subprocess's output until ``marker`` appears (it says the server is ready)."""
    seen = b""
    while marker not in seen:
        chunk = await stream.receive_some(4096)
        assert chunk, f"process ended its output before {marker!r}: {seen.decode()}"
        seen += chunk
    return seen


def test_demo_runs_as_a_real_process_and_exits_zero() -> None:
    result = subprocess.run([*FIXPROXY, "demo"], capture_output=True, timeout=120,
                            check=False, env={**os.environ, "PYTHONWARNINGS": "error"})
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "Logon, signed" in out
    assert "96=" in out
    assert out.count("ExecutionReport") == 3
    assert "Logout" in out


async def test_demo_serve_keeps_a_session_up_for_a_real_engine() -> None:
    port = _free_port()
    process = await trio.lowlevel.open_process(
        [*FIXPROXY, "demo", "--serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(30):
            assert process.stdout is not None
            output = await _wait_for_output(process.stdout, b"Ctrl-C stops")
            api_key = output.split(b"SenderCompID=", 1)[1].split(b",", 1)[0].decode()
            engine = await ScriptedEngine.connect("127.0.0.1", port, sender=api_key,
                                                  target="KalshiNR")
            answer = await engine.logon()
            assert answer is not None
            assert answer.msg_type == tags.MT_LOGON
            await engine.logout()
            await engine.aclose()
    finally:
        process.terminate()
        await process.wait()


async def test_sim_command_serves_every_endpoint_to_a_proxy(tmp_path: Path,
                                                            nursery: trio.Nursery) -> None:
    from prometheus_client import CollectorRegistry
    from support.config import config_with, session_config

    from fixproxy.config.model import TLSPolicy
    from fixproxy.kalshi import ENDPOINTS
    from fixproxy.ops.metrics import Metrics
    from fixproxy.proxy.server import serve_proxy

    key_path, pub_path = generate_key_pair(tmp_path / "keys")
    api_key = str(uuid.uuid4())
    process = await trio.lowlevel.open_process(
        [*FIXPROXY, "sim", "--base-port", "0", "--key", f"{api_key}={pub_path}",
         "--cert-out", str(tmp_path / "simcerts")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(30):
            assert process.stdout is not None
            output = (await _wait_for_output(process.stdout, b"Ctrl-C stops")).decode()
            ports = {line.split()[0]: int(line.split()[1].rsplit(":", 1)[1])
                     for line in output.splitlines() if line.startswith("Kalshi")}
            assert set(ports) == set(ENDPOINTS)
            pin = output.split("pin: ", 1)[1].split()[0]
            session = session_config(
                name="to-sim", endpoint=ENDPOINTS["KalshiDC"], host="127.0.0.1",
                port=ports["KalshiDC"], api_key=api_key, private_key=key_path,
                tls=TLSPolicy(server_name="localhost", verify="ca+pin",
                              ca_file=tmp_path / "simcerts" / "ca.pem", pins=(pin,),
                              pinned_cert=None))
            config = config_with(session)
            bound = await nursery.start(serve_proxy, config, Metrics(CollectorRegistry()))
            engine = await ScriptedEngine.connect(*bound.sessions["to-sim"], sender=api_key,
                                                  target="KalshiDC")
            answer = await engine.logon()
            assert answer is not None
            assert answer.msg_type == tags.MT_LOGON, answer
            await engine.logout()
            await engine.aclose()
    finally:
        process.terminate()
        await process.wait()


async def test_sigterm_logs_out_and_delivers_what_kalshi_sent_first(setup: Setup) -> None:
    async with _running_fixproxy(setup) as (process, engine):
        for _ in range(20):
            await engine.new_order()
        process.send_signal(signal.SIGTERM)  # with orders still in flight
        received = []
        while (message := await engine.receive()) is not None:
            received.append(message)
        await engine.aclose()
        assert await process.wait() == 0
    # Kalshi saw fixproxy's Logout and answered it.
    assert setup.sim.message_count(tags.MT_LOGOUT, "in") == 1
    # Every ExecutionReport the gateway sent before it answered the Logout reached the
    # engine, in order, and the engine was then told why the session ended.
    sent = [FixMessage.parse(event.raw) for event in setup.sim.events
            if event.direction == "out" and event.msg_type == tags.MT_EXECUTION_REPORT]
    reports = [m for m in received if m.msg_type == tags.MT_EXECUTION_REPORT]
    assert [m.get(11) for m in reports] == [m.get(11) for m in sent]
    assert received[-1].msg_type == tags.MT_LOGOUT
    assert "shutting down" in (received[-1].get_str(tags.TEXT) or "")


async def test_a_busy_listen_port_is_one_line_and_exit_1(setup: Setup) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", setup.listen_port))
        squatter.listen()
        done = await _fixproxy("run", "--config", str(setup.config))
    err = done.stderr.decode()
    assert done.returncode == 1
    assert err.strip().splitlines()[-1] == (
        f"fixproxy: error: session 'cli-test': cannot listen on "
        f"127.0.0.1:{setup.listen_port}: Address already in use"), err
    assert "Traceback" not in err
