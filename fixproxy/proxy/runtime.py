"""What one configured session needs at run time, built once when the configuration loads.

A :class:`SessionRuntime` bundles a session's settings with the things made from them that can
fail (its private key, its TLS context and pins), so that a bad key or CA file is an error at
start or at reload, never at the first Logon. Connections take the runtime in force when they
were accepted; a reload builds new runtimes for later connections only.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from fixproxy.config.model import ProxyConfig, SessionConfig
from fixproxy.fix.logon import LogonPolicy, Signer
from fixproxy.net import tls
from fixproxy.net.tls import HandshakeInfo
from fixproxy.ops.metrics import Metrics
from fixproxy.ops.seqstore import SequenceStore
from fixproxy.ops.status import SessionStatus
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.relay import RelayResult, SessionRelay
from fixproxy.signing import LogonSigner, load_private_key

RelayRunner = Callable[[SessionRelay], Awaitable[RelayResult]]
"""Runs a :class:`~fixproxy.proxy.relay.SessionRelay` until it ends and returns its result."""
GatewayConnector = Callable[[], Awaitable[tuple[trio.abc.Stream, HandshakeInfo]]]
"""Opens TLS to the session's gateway, pins checked; what admission calls after the Logon."""


@dataclass(frozen=True, slots=True)
class SessionRuntime:
    """Everything a relay needs for one configured session, built once at start."""

    config: SessionConfig
    policy: LogonPolicy
    sign: Signer
    connect: GatewayConnector
    metrics: Metrics
    manager: SessionManager
    sequences: SequenceStore | None = None
    """Where sequence numbers are kept between connections, for translation."""
    proxy: ProxyConfig | None = None
    """Process-wide settings: where the message journal goes, if anywhere."""
    run_relay: RelayRunner | None = None
    """Runs a session relay to its end; None: in a thread of its own (production). Tests
    drive the relay from trio instead, to use the autojump clock."""


def declare_status(runtime: SessionRuntime) -> SessionStatus:
    """The session's entry on the manager's status board (created idle on first use)."""
    cfg = runtime.config
    return runtime.manager.status.declare(
        cfg.name, endpoint=cfg.endpoint.target_comp_id, gateway=f"{cfg.host}:{cfg.port}",
        listen="{}:{}".format(*cfg.listen), wall=time.time())


def build_runtime(session: SessionConfig, metrics: Metrics,
                  manager: SessionManager | None = None,
                  sequences: SequenceStore | None = None,
                  proxy: ProxyConfig | None = None) -> SessionRuntime:
    """Load a session's key and TLS settings.

    Raises:
        FixProxyError: the key or a TLS file cannot be used.
    """
    signer = LogonSigner(load_private_key(session.private_key, session.private_key_passphrase))
    context = tls.make_client_context(session.tls)
    trust = tls.GatewayTrust.from_policy(session.tls)
    connect = functools.partial(tls.open_gateway_stream, session.host, session.port, trust,
                                context, connect_timeout=session.connect_timeout)
    return SessionRuntime(config=session, policy=session.logon_policy(), sign=signer,
                          connect=connect, metrics=metrics,
                          manager=manager if manager is not None else SessionManager(),
                          sequences=sequences, proxy=proxy)


