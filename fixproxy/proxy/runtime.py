"""What one configured session needs at run time, built once when the configuration loads.

A :class:`SessionRuntime` bundles a session's settings with the things made from them that can
fail (its private key, its TLS context and pins), so that a bad key or CA file is an error at
start or at reload, never at the first Logon. Connections take the runtime in force when they
were accepted; a reload builds new runtimes for later connections only.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from fixproxy.config.model import ProxyConfig, RecoveryConfig, SessionConfig, TLSPolicy
from fixproxy.errors import ConfigError
from fixproxy.fix.logon import LogonPolicy, Signer
from fixproxy.net import pins, tls
from fixproxy.net.tls import HandshakeInfo
from fixproxy.ops.metrics import Metrics
from fixproxy.ops.recoverystore import RecoveryStore
from fixproxy.ops.seqstore import SequenceStore
from fixproxy.ops.status import SessionStatus
from fixproxy.proxy.dropcopy import DropCopyConnector
from fixproxy.proxy.handover import RelayResult
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.relay import SessionRelay
from fixproxy.session.recovery import RecoveryState
from fixproxy.signing import LogonSigner, load_private_key

RelayRunner = Callable[[SessionRelay], Awaitable[RelayResult]]
"""Runs a :class:`~fixproxy.proxy.relay.SessionRelay` until it ends and returns its result."""
GatewayConnector = Callable[[], Awaitable[tuple[trio.abc.Stream, HandshakeInfo]]]
"""Opens TLS to the session's gateway, pins checked; what admission calls after the Logon."""


@dataclass(frozen=True, slots=True)
class RecoveryRuntime:
    """What a session's drop-copy recovery needs, built with the session's runtime."""

    config: RecoveryConfig
    sign: Signer
    """Signs the drop-copy Logon with the drop-copy key."""
    connect: DropCopyConnector
    store: RecoveryStore | None = None
    """Where the state is kept between connections; None: in :attr:`memory` only (hand-built
    configurations without a state_dir: the demo, tests)."""
    memory: dict[str, RecoveryState] = field(default_factory=dict)
    """The state by session name when there is no store (trio's thread alone uses it)."""


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
    recovery: RecoveryRuntime | None = None
    """Drop-copy recovery, when the session configures it."""


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
    context = _client_context(session.tls)
    trust = pins.GatewayTrust.from_policy(session.tls)
    connect = functools.partial(tls.open_gateway_stream, session.host, session.port, trust,
                                context, connect_timeout=session.connect_timeout)
    stores = (("journal",) if proxy is not None and proxy.journal_dir is not None else ()) \
        + (("sequences",) if sequences is not None and session.translate_sequence else ()) \
        + (("recovery",) if sequences is not None and session.recovery is not None else ())
    metrics.state_writes.declare(session.name, stores)
    return SessionRuntime(config=session, policy=session.logon_policy(), sign=signer,
                          connect=connect, metrics=metrics,
                          manager=manager if manager is not None else SessionManager(),
                          sequences=sequences, proxy=proxy,
                          recovery=_recovery_runtime(session, metrics, sequences))


def _recovery_runtime(session: SessionConfig, metrics: Metrics,
                      sequences: SequenceStore | None) -> RecoveryRuntime | None:
    recovery = session.recovery
    if recovery is None:
        return None
    signer = LogonSigner(load_private_key(recovery.private_key,
                                          recovery.private_key_passphrase))
    connect = functools.partial(
        tls.open_gateway_stream, recovery.host, recovery.port,
        pins.GatewayTrust.from_policy(recovery.tls), _client_context(recovery.tls),
        connect_timeout=min(session.connect_timeout, recovery.timeout))
    store = RecoveryStore(sequences.directory) if sequences is not None else None
    metrics.declare_recovery(session.name)
    return RecoveryRuntime(recovery, signer, connect, store)




MAX_CACHED_CONTEXTS: Final = 64
"""TLS client contexts kept across reloads, by policy and the bytes of its ca_file.

Building one parses the CA file, or the whole system store when none is set: milliseconds of
C code holding the GIL, during which every session relay thread waits. A reload rebuilds every
session's runtime; an unchanged policy and file now reuse the context (an SSLContext serves
any number of connections)."""
_CONTEXTS: Final[OrderedDict[tuple[TLSPolicy, bytes | None], ssl.SSLContext]] = OrderedDict()
"""Only the thread that builds runtimes (trio's) uses it."""


def _client_context(policy: TLSPolicy) -> ssl.SSLContext:
    """:func:`fixproxy.net.tls.make_client_context`, reused while the policy and its CA file's
    bytes are unchanged.

    Raises:
        ConfigError: ``ca_file`` cannot be read or holds no certificate.
    """
    digest: bytes | None = None
    if policy.ca_file is not None and policy.verify != "pin":
        try:
            digest = hashlib.sha256(policy.ca_file.read_bytes()).digest()
        except OSError as exc:
            raise ConfigError(f"cannot load ca_file {policy.ca_file}: {exc.strerror or exc}",
                              key="ca_file") from exc
    key = (policy, digest)
    context = _CONTEXTS.get(key)
    if context is None:
        context = tls.make_client_context(policy)
        _CONTEXTS[key] = context
        while len(_CONTEXTS) > MAX_CACHED_CONTEXTS:
            _CONTEXTS.popitem(last=False)
    else:
        _CONTEXTS.move_to_end(key)
    return context
