"""The ``fixproxy`` command line: the only caller of ``trio.run`` and the only place errors
become exit codes."""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import click
import trio

from fixproxy import __version__
from fixproxy.config.loader import ENV_CONFIG, config_path_from, load_config
from fixproxy.config.model import Config
from fixproxy.errors import FixProxyError
from fixproxy.ops.logs import LOG_FORMATS, setup_logging
from fixproxy.ops.metrics import Metrics

EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
ENV_SWITCH_INTERVAL: Final = "FIXPROXY_SWITCH_INTERVAL"
"""Environment variable overriding :data:`DEFAULT_SWITCH_INTERVAL` (seconds) for ``run``."""
DEFAULT_SWITCH_INTERVAL: Final = 0.0005
"""Seconds a thread may hold the GIL while another waits for it (``sys.setswitchinterval``).
CPython's 5 ms means a session thread woken by its socket can wait that long behind a scrape,
a reload or a Logon signature in trio's thread; 0.5 ms bounds that wait ten times tighter."""
T = TypeVar("T")


def _setup_logging(level: str, log_format: str = "text") -> None:
    setup_logging(level, "json" if log_format == "json" else "text", sys.stderr)


class Failure(click.ClickException):
    """The one way a command fails: one line on stderr and an exit code, never a traceback.

    Every expected problem (a bad file, a busy port, a gateway that cannot be reached) ends
    a command through this exception; click prints it and exits with its code.
    """

    def __init__(self, message: str, *, label: str | None = "error",
                 exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.label = label
        # click reads the code from the instance; click 8.5 types it as a class variable, so
        # the instance's own value is set where the type checker does not object in any
        # click release.
        setattr(self, "exit_code", exit_code)  # noqa: B010

    def show(self, file: IO[Any] | None = None) -> None:
        prefix = "" if self.label is None else f"fixproxy: {self.label}: "
        click.echo(f"{prefix}{self.format_message()}", err=True, file=file)


def _our_error(exc: BaseException) -> FixProxyError | None:
    """The FixProxyError behind ``exc``, looking inside the groups trio's nurseries raise."""
    if isinstance(exc, FixProxyError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _our_error(inner)
            if found is not None:
                return found
    return None


def _run(async_fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``async_fn`` under trio, turning our errors into a :class:`Failure`."""
    try:
        return trio.run(async_fn)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as exc:
        ours = _our_error(exc)
        if ours is None:
            raise
        logging.getLogger("fixproxy").debug("the error in full", exc_info=exc)
        raise Failure(str(ours)) from exc


def _load(config_path: Path | None, *, check_files: bool = True) -> Config:
    try:
        path = config_path_from(None if config_path is None else str(config_path))
    except FixProxyError as exc:
        raise Failure(str(exc), exit_code=EXIT_USAGE) from exc
    try:
        return load_config(path, check_files=check_files)
    except FixProxyError as exc:
        raise Failure(str(exc), label="configuration error") from exc


config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
    help=f"The TOML configuration file [default: ${ENV_CONFIG}].")
log_level_option = click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
    show_default=True, help="How much to log (to stderr).")
log_format_option = click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
    help="Log lines as human-readable text or as one JSON object per line (ts, level, "
         "logger, msg, session, conn), for a log collector.")


@click.group()
@click.version_option(__version__, prog_name="fixproxy")
def main() -> None:
    """fixproxy: plain-TCP FIX engines in, signed Logons over pinned TLS to Kalshi out.

    Point an unmodified FIX engine at a local listener; fixproxy signs its Logon, speaks TLS
    to Kalshi with pinned certificates, and relays everything else byte for byte.
    """


@main.command()
@config_option
@log_level_option
@log_format_option
def run(config_path: Path | None, log_level: str, log_format: str) -> None:
    """Run the sidecar: listen for engines and relay them to Kalshi until SIGTERM/SIGINT.

    $FIXPROXY_SWITCH_INTERVAL sets how long one thread may hold Python's interpreter while a
    session thread waits for it, in seconds (default 0.0005).
    """
    from fixproxy.proxy.server import run_until_signal

    interval = _switch_interval(os.environ)
    _setup_logging(log_level, log_format)
    config = _load(config_path)
    metrics = Metrics()
    sys.setswitchinterval(interval)
    _settle_heap()
    _run(lambda: run_until_signal(config, metrics))


def _settle_heap() -> None:
    """Take what start-up made (modules, the configuration, the metrics) out of the cyclic
    garbage collector's reach.

    Those objects live as long as the process, yet a full collection walks all of them while
    holding the interpreter lock, which stalls every session thread for milliseconds (about
    20 ms at start). Frozen, they are never walked again; a collection then costs what the
    sessions themselves allocated.
    """
    gc.collect()
    gc.freeze()


def _switch_interval(environ: Mapping[str, str]) -> float:
    """The GIL switch interval: ``FIXPROXY_SWITCH_INTERVAL`` (seconds) or the default."""
    text = environ.get(ENV_SWITCH_INTERVAL)
    if text is None:
        return DEFAULT_SWITCH_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise Failure(f"${ENV_SWITCH_INTERVAL} must be a positive number of seconds, got "
                      f"{text!r}", exit_code=EXIT_USAGE)
    return value


@main.command()
@config_option
@click.option("--offline", is_flag=True,
              help="Check the file and keys only; do not connect to the gateways.")
def check(config_path: Path | None, offline: bool) -> None:
    """Validate the configuration and keys, then test TLS and pins against each gateway."""
    from fixproxy.cli.check import preflight

    config = _load(config_path)
    ok = _run(lambda: preflight(config, online=not offline, echo=click.echo))
    sys.exit(0 if ok else EXIT_ERROR)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True,
              help="Print the /status answer as JSON instead of a table.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Show what each session of the running fixproxy is doing: state and since when, sequence
    numbers, last message ages, readiness and the last error.

    Asks the running fixproxy at the metrics address of the configuration ([metrics]
    listen), so that endpoint must be enabled. Exits 1 if fixproxy cannot be reached.
    """
    import json

    from fixproxy.cli.report import format_status
    from fixproxy.ops.control import fetch_status

    # Only the metrics address is needed: key files may belong to the user fixproxy runs as.
    config = _load(config_path, check_files=False)
    if config.metrics.listen is None:
        raise Failure("the metrics endpoint is disabled ([metrics] listen = \"\"), and "
                      "fixproxy serves its status there: set [metrics] listen and restart "
                      "fixproxy")
    try:
        answer = fetch_status(config.metrics.listen)
    except FixProxyError as exc:
        raise Failure(str(exc)) from exc
    click.echo(json.dumps(answer, indent=2) if as_json else format_status(answer))


@main.command()
@config_option
@click.option("--timeout", default=10.0, show_default=True,
              help="Seconds to wait for the running fixproxy's answer.")
def reload(config_path: Path | None, timeout: float) -> None:
    """Make the running fixproxy re-read its configuration, without dropping live sessions.

    The file is checked here first (syntax, keys, certificates); if it is valid, the fixproxy
    whose pid file is in the file's [proxy] state_dir gets SIGHUP, and its answer is printed.
    New connections use the new configuration; live sessions keep theirs until they end.
    Exits 1 if the file is invalid, no fixproxy runs, or it rejected the file.
    """
    from prometheus_client import CollectorRegistry

    from fixproxy.ops.control import request_reload
    from fixproxy.proxy.runtime import build_runtime

    config = _load(config_path)
    metrics = Metrics(CollectorRegistry())
    for session in config.sessions:
        try:
            build_runtime(session, metrics)
        except FixProxyError as exc:
            source = session.private_key_passphrase
            if source is not None and source.env is not None and source.env not in os.environ:
                # The service's environment is not this shell's: leave the key to the
                # running fixproxy, which checks everything again before applying.
                click.echo(f"fixproxy: note: session {session.name!r}: not checked here, "
                           f"${source.env} (the key's passphrase) is not set in this shell",
                           err=True)
                continue
            raise Failure(f"session {session.name!r}: {exc}",
                          label="configuration error") from exc
    state_dir = config.proxy.state_dir
    if state_dir is None:  # the loader always sets it; hand-built configurations do not
        raise Failure("the configuration has no [proxy] state_dir")
    try:
        pid, record = request_reload(state_dir, timeout=timeout)
    except FixProxyError as exc:
        raise Failure(str(exc)) from exc
    if record is None:
        raise Failure(f"fixproxy: sent SIGHUP to fixproxy (pid {pid}) but it reported no "
                      f"result within {timeout:g} s; see its log", label=None)
    if record.result == "ok":
        click.echo(f"fixproxy (pid {pid}) reloaded {config.path}: {record.detail}")
        return
    if record.result == "rejected":
        raise Failure(f"fixproxy (pid {pid}) rejected the configuration and keeps the "
                      f"previous one: {record.detail}", label=None)
    raise Failure(f"fixproxy (pid {pid}) did not reload: {record.detail}", label=None)


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("keys"), show_default=True, help="Directory for the key pair.")
@click.option("--name", default="kalshi-fix", show_default=True, help="File name stem.")
def keygen(out_dir: Path, name: str) -> None:
    """Create an RSA-2048 key pair as Kalshi asks (PKCS#8 private key, mode 0600).

    Upload the .pub.pem file to Kalshi when creating the FIX API key; keep the .key file
    private and point the session's private_key at it.
    """
    from fixproxy.signing import generate_key_pair

    try:
        key_path, pub_path = generate_key_pair(out_dir, name)
    except FixProxyError as exc:
        raise Failure(str(exc)) from exc
    click.echo(f"private key: {key_path} (mode 0600; never share it)")
    click.echo(f"public key:  {pub_path} (upload this to Kalshi)")


@main.command()
@click.argument("target", metavar="HOST:PORT")
@click.option("--server-name", help="SNI and certificate name, if not HOST.")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Trust anchors to verify against (default: the system store).")
@click.option("--save", "save_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the leaf certificate (PEM) here, for pinned_cert.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait.")
def pin(target: str, server_name: str | None, ca_file: Path | None, save_path: Path | None,
        timeout: float) -> None:
    """Show a gateway's certificate chain and the pins to paste into the configuration."""
    from fixproxy.cli.report import format_chain_report, leaf_pem
    from fixproxy.net import tls

    host, sep, port_text = target.rpartition(":")
    if not sep or not port_text.isdigit():
        raise Failure("expected HOST:PORT, e.g. fix.elections.kalshi.com:8228",
                      exit_code=EXIT_USAGE)
    host = host.strip("[]")
    report = _run(lambda: tls.fetch_chain(host, int(port_text), server_name, timeout=timeout,
                                          ca_file=ca_file))
    click.echo(format_chain_report(report))
    if save_path is not None:
        save_path.write_bytes(leaf_pem(report))
        click.echo(f"saved the leaf certificate to {save_path} (use it as pinned_cert)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--base-port", default=8228, show_default=True,
              help="Port of KalshiNR; the other endpoints follow Kalshi's layout from here "
                   "(0: ephemeral ports).")
@click.option("--key", "key_specs", multiple=True, metavar="APIKEY=PUBLIC.pem", required=True,
              help="Register an API key with its public key (repeatable).")
@click.option("--cert", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Server certificate chain (PEM); a throwaway one is made if absent.")
@click.option("--cert-key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Private key of --cert.")
@click.option("--cert-out", type=click.Path(path_type=Path, file_okay=False),
              help="Directory of the simulator's certificates (ca.pem is the CA for clients "
                   "to trust): kept there and reused on the next start, made if missing.")
@click.option("--config-out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write a fixproxy configuration for these ports, certificate and keys "
                   "(one session per --key; needs --cert-out).")
@click.option("--fill-after", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Rest each new order and fill it this many seconds later, whether or not "
                   "its engine is still connected (for drop-copy recovery).")
@click.option("--exchange-indexes", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Exchange indexes orders are spread over, each with its own ExecIDs.")
@click.option("--replay/--no-replay", "replay_allowlisted", default=True, show_default=True,
              help="Whether the account is allowlisted for drop-copy replay (--no-replay: "
                   "every EventResendRequest is refused with 21004=5).")
@log_level_option
@log_format_option
def sim(host: str, base_port: int, key_specs: tuple[str, ...], cert: Path | None,
        cert_key: Path | None, cert_out: Path | None, config_out: Path | None,
        fill_after: float | None, exchange_indexes: int, replay_allowlisted: bool,
        log_level: str,
        log_format: str) -> None:
    """Run the simulated Kalshi FIX gateway (strict: it verifies every Logon signature)."""
    from fixproxy.sim.run import run_sim

    _setup_logging(log_level, log_format)
    _run(lambda: run_sim(host=host, base_port=base_port, key_specs=list(key_specs),
                         cert=cert, cert_key=cert_key, cert_out=cert_out, config_out=config_out,
                         echo=click.echo, fill_after=fill_after,
                         exchange_indexes=exchange_indexes,
                         replay_allowlisted=replay_allowlisted))


@main.command()
@click.option("--connect", "target", required=True, metavar="HOST:PORT",
              help="The fixproxy listener to connect to (a session's listen address).")
@click.option("--sender", required=True, metavar="KEY",
              help="SenderCompID (49): the session's api_key.")
@click.option("--target", "target_comp_id", required=True, metavar="ENDPOINT",
              help="TargetCompID (56): KalshiNR, KalshiRT, KalshiDC, ...")
@click.option("--orders", default=0, show_default=True, type=click.IntRange(min=0),
              help="NewOrderSingles to send, each waiting for its ExecutionReport. None by "
                   "default: the smoke test does not trade unless asked.")
@click.option("--symbol", default="HIGHNY-23DEC31", show_default=True,
              help="The market ticker (55) of the orders.")
@click.option("--hold", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to stay logged on after the TestRequest, heartbeating.")
@click.option("--reset", is_flag=True, help="Send ResetSeqNumFlag 141=Y on the Logon.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds each step may wait for its answer.")
def engine(target: str, sender: str, target_comp_id: str, orders: int, symbol: str,
           hold: float, reset: bool, timeout: float) -> None:
    """Log on through a running fixproxy as a FIX engine would: the smoke test of a session.

    Logon, the orders asked for, a TestRequest, an optional hold, a Logout; every message is
    printed. Exits 0 when each step got its answer, 1 with the step that did not.
    """
    from fixproxy.cli.engine import EnginePlan, run_engine

    host, port = _host_port(target)
    plan = EnginePlan(host=host, port=port, sender=sender, target=target_comp_id,
                      orders=orders, hold=hold, timeout=timeout, reset=reset, symbol=symbol)
    click.echo(_run(lambda: run_engine(plan, click.echo)))


def _host_port(target: str) -> tuple[str, int]:
    host, sep, port_text = target.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise Failure(f"expected HOST:PORT, got {target!r}", exit_code=EXIT_USAGE)
    return host.strip("[]"), int(port_text)


@main.command()
@click.option("--serve", is_flag=True,
              help="Keep the simulator and proxy running for a real engine, until Ctrl-C.")
@click.option("--orders", default=3, show_default=True, help="Orders the scripted engine sends.")
@click.option("--port", default=9878, show_default=True,
              help="With --serve: the port the engine connects to.")
@click.option("--recovery", is_flag=True,
              help="Show a fill missed across a dropped connection, recovered through the "
                   "drop copy ([session.recovery]).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="How much to log (to stderr). Default: info with --serve (each engine "
                   "connection is logged), warning otherwise (the transcript says it all).")
@log_format_option
def demo(serve: bool, orders: int, port: int, recovery: bool, log_level: str | None,
         log_format: str) -> None:
    """Run a whole session locally: simulated Kalshi, fixproxy in front, a scripted engine.

    Needs no Kalshi credentials: certificates and keys are throwaway, made for this run.
    """
    _setup_logging(log_level or ("info" if serve else "warning"), log_format)
    if recovery:
        if serve:
            raise click.UsageError("--recovery runs a scripted engine; it cannot be combined "
                                   "with --serve")
        from fixproxy.cli.demo_recovery import run_recovery_demo

        _run(lambda: run_recovery_demo(orders=orders, echo=click.echo))
        return
    from fixproxy.cli.demo import run_demo

    _run(lambda: run_demo(serve=serve, orders=orders, serve_port=port, echo=click.echo))


if __name__ == "__main__":
    main()
