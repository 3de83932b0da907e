"""Readiness probes, and the ``/readyz`` and ``/status`` answers of the metrics endpoint.

Theory of operation
-------------------
fixproxy is ready when an engine that connects now would get through to Kalshi: for every
configured session, the gateway accepts a TLS connection that passes the same CA, hostname and
pin checks a real session makes. A session that is logged on proves that by itself, so it is
not probed. Every other session is probed in the background with the session's own connector
(``SessionRuntime.connect``): TCP connect, explicit handshake, pin check, then an immediate
close. No FIX byte is sent, so Kalshi sees no Logon: nothing counts against the API key's one
connection or its Logon rate limit, and the engine's next Logon is never refused as a
duplicate because of a probe.

Probing when ``/readyz`` is requested was rejected: an orchestrator polling every few seconds
would set the rate of TLS connections to Kalshi, and a slow gateway would make the readiness
request itself time out. Here requests only read the last results, and the probe rate is
fixed by configuration: every ``readiness_interval`` seconds while the gateway passes, every
``READINESS_RETRY`` seconds while it fails, so readiness comes back soon after the gateway
does. During Kalshi's maintenance window a failing gateway is expected: the session counts as
ready and is probed at the normal interval instead of hammered.

Until its first probe has finished a session is not ready (``not_checked_yet``); the first
probes start as soon as the server does. The list of sessions is read through a callable on
every pass, so sessions added or removed by a configuration reload are picked up.

Everything here runs in the trio thread of the relay: answers read the status board and the
results without locks.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import trio
from prometheus_client import CollectorRegistry, Counter

from fixproxy import __version__
from fixproxy.config.model import DEFAULT_READINESS_INTERVAL
from fixproxy.errors import FixProxyError, PinMismatchError, UpstreamError
from fixproxy.net.http import Route
from fixproxy.ops.metrics import Metrics
from fixproxy.ops.status import Clocks, iso
from fixproxy.proxy.manager import SessionManager
from fixproxy.proxy.runtime import SessionRuntime
from fixproxy.session.machine import LIVE_STATES

logger = logging.getLogger("fixproxy.health")

READINESS_RETRY: Final = 2.0
"""Seconds between probes of a gateway that failed its last one (never more than the
configured interval): short enough that readiness returns within seconds of the gateway."""
PROBE_SLACK: Final = 5.0
"""Seconds a probe may run beyond the session's ``connect_timeout`` (which the connector
enforces itself) before it is abandoned: a guard against a connector that hangs."""
JSON_TYPE: Final = "application/json"


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether one session is ready, and why."""

    ready: bool
    reason: str
    """``ok``, ``logged_on``, ``maintenance``; or ``not_checked_yet``, ``refused``,
    ``timeout``, ``tls_error``, ``pin_mismatch``, ``error``."""
    detail: str = ""
    checked_at: float | None = None
    """Wall time of the check this rests on; None before the first one."""

    def to_json(self) -> dict[str, object]:
        """Plain JSON types, as /readyz and /status show it."""
        return {"ready": self.ready, "reason": self.reason, "detail": self.detail,
                "checked_at": None if self.checked_at is None else iso(self.checked_at)}


NOT_CHECKED: Final = Readiness(False, "not_checked_yet",
                               "the first TLS check of the gateway has not finished yet")

_CHECK_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = (
    weakref.WeakKeyDictionary())


def _checks_counter(registry: CollectorRegistry) -> Counter:
    """fixproxy_readiness_checks_total on ``registry``, registered once per registry (a server
    rebuilt on the same metrics must not register the name twice)."""
    counter = _CHECK_COUNTERS.get(registry)
    if counter is None:
        counter = _CHECK_COUNTERS[registry] = Counter(
            "fixproxy_readiness_checks", "Readiness probes of the gateways by result (ok, "
            "refused, timeout, tls_error, pin_mismatch, error). Not engine connections: "
            "those are fixproxy_upstream_connects_total.", ["session", "result"],
            registry=registry)
    return counter


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Health:
    """Probes every configured session's gateway and answers ``/readyz`` and ``/status``.

    Args:
        manager: the server's session manager: the status board, the maintenance schedule
            and whether the server is draining.
        runtimes: returns the sessions configured now; called on every pass, so a reload
            that replaces the list is followed.
        metrics: where the probe counter and certificate expiry are recorded.
        interval: seconds between probes of a gateway that passed.
        retry: seconds between probes of a gateway that failed (capped at ``interval``).
        now: the wall clock, for the maintenance window (tests replace it).
    """

    def __init__(self, manager: SessionManager,
                 runtimes: Callable[[], Sequence[SessionRuntime]], metrics: Metrics, *,
                 interval: float = DEFAULT_READINESS_INTERVAL,
                 retry: float = READINESS_RETRY,
                 now: Callable[[], datetime] = _utc_now) -> None:
        self.manager = manager
        self.runtimes = runtimes
        self.metrics = metrics
        self.interval = interval
        """Seconds between probes of a passing gateway; a reload may change it."""
        self.retry = retry
        self.now = now
        self._results: dict[str, Readiness] = {}
        self._checked = trio.Event()
        self._wake = trio.Event()
        self._checks = _checks_counter(metrics.registry)

    # --- probing ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe every configured session until cancelled, following reloads."""
        watched: dict[str, tuple[SessionRuntime, trio.CancelScope]] = {}
        async with trio.open_nursery() as nursery:
            while True:
                current = {runtime.config.name: runtime for runtime in self.runtimes()}
                for name, (runtime, scope) in list(watched.items()):
                    replacement = current.get(name)
                    if replacement is runtime:
                        continue
                    scope.cancel()
                    del watched[name]
                    # A session whose settings changed must pass again before it counts.
                    if replacement is None or replacement.config != runtime.config:
                        self._results.pop(name, None)
                for name, runtime in current.items():
                    if name not in watched:
                        scope = trio.CancelScope()
                        watched[name] = (runtime, scope)
                        nursery.start_soon(self._watch, runtime, scope)
                self._wake = trio.Event()
                with trio.move_on_after(self._retry_seconds()):
                    await self._wake.wait()

    def refresh(self) -> None:
        """Look at the session list now rather than at the next pass (after a reload)."""
        self._wake.set()

    def _retry_seconds(self) -> float:
        return min(self.retry, self.interval)

    async def _watch(self, runtime: SessionRuntime, scope: trio.CancelScope) -> None:
        """Probe one session: at once, then on its schedule, and again as soon as a logged-on
        connection ends (the gateway may be why it ended)."""
        name = runtime.config.name
        with scope:
            next_probe = trio.current_time()
            was_live = False
            while True:
                if self._is_live(name):
                    was_live = True
                    self._record(name, self._logged_on(), probed=False)
                    wake = trio.current_time() + self._retry_seconds()
                else:
                    if was_live:
                        was_live = False
                        next_probe = trio.current_time()
                    if trio.current_time() >= next_probe:
                        result = await self.probe(runtime)
                        if scope.cancel_called:
                            return  # replaced by a reload while probing: not ours to record
                        self._record(name, result, probed=True)
                        passed = result.ready or self._window_text() is not None
                        next_probe = trio.current_time() + (
                            self.interval if passed else self._retry_seconds())
                    wake = min(next_probe, trio.current_time() + self._retry_seconds())
                await trio.sleep_until(wake)

    async def probe(self, runtime: SessionRuntime) -> Readiness:
        """Open TLS to the session's gateway with its full checks, close it, say how it went.

        Never raises for a gateway fault; only cancellation passes through.
        """
        cfg = runtime.config
        peer = f"{cfg.host}:{cfg.port}"
        result: Readiness
        try:
            with trio.fail_after(cfg.connect_timeout + PROBE_SLACK):
                stream, info = await runtime.connect()
        except PinMismatchError as exc:
            result = Readiness(False, exc.result, (
                f"the gateway {peer} presented a certificate matching none of the configured "
                f"pins (presented: {', '.join(exc.presented)}; configured: "
                f"{', '.join(exc.expected)})"), time.time())
        except UpstreamError as exc:
            result = Readiness(False, exc.result, str(exc), time.time())
        except trio.TooSlowError:
            result = Readiness(False, "timeout", f"no TLS session with {peer} within "
                               f"{cfg.connect_timeout + PROBE_SLACK:g} s", time.time())
        except FixProxyError as exc:
            result = Readiness(False, "error", str(exc), time.time())
        except Exception as exc:  # a fault of fixproxy's own must not stop the other probes
            logger.exception("session %s: readiness probe of %s failed", cfg.name, peer)
            result = Readiness(False, "error", f"internal error: {exc!r}", time.time())
        else:
            await trio.aclose_forcefully(stream)
            self.metrics.set_certificate_expiry(cfg.name, info.leaf_subject,
                                                info.leaf_not_after.timestamp())
            result = Readiness(True, "ok", (
                f"TLS to {peer} passed the certificate checks ({info.tls_version}, "
                f"{info.handshake_seconds * 1000:.0f} ms); certificate {info.leaf_subject} "
                f"valid until {iso(info.leaf_not_after.timestamp())}"), time.time())
        self._checks.labels(session=cfg.name, result=result.reason).inc()
        return result

    def _record(self, name: str, result: Readiness, *, probed: bool) -> None:
        before = self._results.get(name)
        self._results[name] = result
        if probed and (before is None or before.ready != result.ready
                       or before.reason != result.reason):
            if result.ready:
                logger.info("session %s is ready: %s", name, result.detail)
            else:
                logger.warning("session %s is not ready (%s): %s", name, result.reason,
                               result.detail)
        if probed:
            self._checked.set()
            self._checked = trio.Event()

    async def wait_checked(self) -> None:
        """Return after the next probe result has been recorded."""
        await self._checked.wait()

    # --- reading ---------------------------------------------------------------------------

    def _is_live(self, name: str) -> bool:
        status = self.manager.status.get(name)
        return status is not None and status.state in LIVE_STATES

    def _logged_on(self) -> Readiness:
        return Readiness(True, "logged_on", "the session is logged on to the gateway",
                         time.time())

    def _window_text(self) -> str | None:
        window = self.manager.maintenance_window(self.now())
        if window is None:
            return None
        return f"Kalshi's maintenance window is in progress until {window.describe_end()}"

    def session_readiness(self, name: str) -> Readiness:
        """Readiness of session ``name`` now: logged on, else its last probe, excused while
        Kalshi's maintenance window is in progress."""
        if self._is_live(name):
            return self._logged_on()
        result = self._results.get(name, NOT_CHECKED)
        if result.ready:
            return result
        window = self._window_text()
        if window is None:
            return result
        return Readiness(True, "maintenance",
                         f"{window}; last check: {result.reason}: {result.detail}",
                         result.checked_at)

    def readiness(self) -> dict[str, Readiness]:
        """Readiness of every configured session, by name."""
        return {runtime.config.name: self.session_readiness(runtime.config.name)
                for runtime in self.runtimes()}

    def ready_json(self) -> dict[str, object]:
        """The /readyz body: overall readiness and every session's."""
        sessions = self.readiness()
        draining = self.manager.draining
        return {"ready": not draining and all(r.ready for r in sessions.values()),
                "draining": draining,
                "sessions": {name: r.to_json() for name, r in sessions.items()}}

    def status_json(self) -> dict[str, object]:
        """The /status body: the status board, each session with its readiness."""
        clocks = Clocks(trio.current_time(), time.time())
        configured = {runtime.config.name for runtime in self.runtimes()}
        sessions: list[dict[str, object]] = []
        for status in self.manager.status:
            entry = status.to_json(clocks)
            entry["readiness"] = (self.session_readiness(status.name).to_json()
                                  if status.name in configured else None)
            sessions.append(entry)
        return {"version": __version__, "now": iso(clocks.wall),
                "draining": self.manager.draining,
                "maintenance": self._maintenance_json(), "sessions": sessions}

    def _maintenance_json(self) -> dict[str, object]:
        now = self.now()
        schedule = self.manager.maintenance
        if schedule is None:
            return {"active": False, "scheduled": False}
        active = schedule.active_window(now)
        answer: dict[str, object] = {"active": active is not None, "scheduled": True,
                                     "schedule": schedule.describe()}
        try:
            window = active if active is not None else schedule.next_window(now)
        except FixProxyError:
            return answer
        answer["window"] = {"start": iso(window.start.timestamp()),
                            "end": iso(window.end.timestamp()),
                            "describe": window.describe()}
        return answer

    # --- HTTP ------------------------------------------------------------------------------

    def routes(self) -> dict[str, Route]:
        """``/readyz`` and ``/status`` for the metrics endpoint."""
        return {"/readyz": self._readyz, "/status": self._status}

    def _readyz(self) -> tuple[int, str, bytes]:
        body = self.ready_json()
        return (200 if body["ready"] else 503), JSON_TYPE, _encode(body)

    def _status(self) -> tuple[int, str, bytes]:
        return 200, JSON_TYPE, _encode(self.status_json())


def _encode(body: dict[str, object]) -> bytes:
    return (json.dumps(body, indent=2) + "\n").encode()
