"""``fixproxy check``: prove a configuration works before the first Logon depends on it."""

from __future__ import annotations

from collections.abc import Callable

import trio
from prometheus_client import CollectorRegistry

from fixproxy.config.model import Config
from fixproxy.errors import FixProxyError, PinMismatchError, UpstreamError
from fixproxy.fix.framer import SCANNER
from fixproxy.net.listen import open_listeners
from fixproxy.ops.metrics import Metrics
from fixproxy.proxy.recovery import check_drop_copy
from fixproxy.proxy.runtime import SessionRuntime, build_runtime


async def preflight(config: Config, *, online: bool, echo: Callable[[str], object]) -> bool:
    """Check every session's key, TLS settings and listen address, the metrics address, and
    (online) each gateway's TLS and pins.

    Returns:
        True if every check passed; each result is reported through ``echo``.
    """
    ok = True
    metrics = Metrics(CollectorRegistry())
    echo(f"configuration {config.path}: {len(config.sessions)} session(s); frame scanner: "
         f"{'C accelerator' if SCANNER == 'c' else 'pure Python (the C scanner is not built)'}")
    if config.metrics.listen is not None:
        host, port = config.metrics.listen
        busy = await _bind_test(host, port)
        echo(f"FAIL [metrics] listen: {busy}" if busy is not None else
             f"ok   [metrics] listen: can listen on {host}:{port}")
        ok = ok and busy is None
    for session in config.sessions:
        label = f"session {session.name!r} ({session.endpoint.target_comp_id})"
        try:
            runtime = build_runtime(session, metrics)
        except FixProxyError as exc:
            echo(f"FAIL {label}: {exc}")
            ok = False
            continue
        policy = runtime.policy
        if session.recovery is not None:
            echo(f"ok   {label}: drop-copy key {session.recovery.private_key} loads "
                 f"(recovery through {session.recovery.host}:{session.recovery.port})")
        echo(f"ok   {label}: key {session.private_key} loads; 141=Y "
             f"{'forced' if policy.force_reset else 'as the engine asks'}; "
             f"verify {session.tls.verify}")
        host, port = session.listen
        busy = await _bind_test(host, port)
        echo(f"FAIL {label}: {busy}" if busy is not None else
             f"ok   {label}: can listen on {host}:{port}")
        ok = ok and busy is None
        if not online:
            continue
        try:
            stream, info = await runtime.connect()
        except PinMismatchError as exc:
            echo(f"FAIL {label}: {exc}\n     presented pins: {list(exc.presented)}")
            ok = False
            continue
        except UpstreamError as exc:
            echo(f"FAIL {label}: {session.host}:{session.port}: {exc}")
            ok = False
            continue
        with trio.move_on_after(2):
            await stream.aclose()
        echo(f"ok   {label}: TLS to {session.host}:{session.port} ({info.tls_version}); "
             f"certificate {info.leaf_subject} valid until {info.leaf_not_after:%Y-%m-%d}")
        if session.recovery is not None:
            ok = await _check_drop_copy(runtime, label, echo) and ok
    return ok


async def _check_drop_copy(runtime: SessionRuntime, label: str,
                           echo: Callable[[str], object]) -> bool:
    """Log on to the session's drop copy and out again."""
    try:
        text = await check_drop_copy(runtime)
    except FixProxyError as exc:
        echo(f"FAIL {label}: {exc}")
        return False
    echo(f"ok   {label}: {text}")
    return True


async def _bind_test(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (as ``run`` would), or None if it can."""
    try:
        listeners = await open_listeners(host, port, "listen")
    except FixProxyError as exc:
        text = str(exc).removeprefix("listen: ")
        if "in use" in text:
            text += " (another process listens there: is fixproxy already running?)"
        return text
    for listener in listeners:
        await listener.aclose()
    return None
