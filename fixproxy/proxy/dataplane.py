"""The data plane's shared thread: every logged-on session's relay, in one ``poll`` loop.

Theory of operation
-------------------
A session starts in a thread of its own (:meth:`SessionRelay.run_logon`): until the gateway has
answered the Logon the relay waits for the control plane (the outcome is recorded before the
engine may react to it), and such a wait must hold up no other session. Once logged on, a
relay only relays, and its reports to the control plane are fire-and-forget; it is then
handed to the :class:`DataPlane`, whose one thread waits with ``poll`` on the sockets and
wake-up pipes of every live session and calls each relay's :meth:`~SessionRelay.handle` with
the events that are its own, or when its next deadline (the machine's timers, a decrypted TLS
record that ``poll`` cannot see) comes.

Measured with many sessions, one thread per session lost to this: twenty session threads take
turns at the interpreter lock around every ``poll``, ``recv`` and ``send``, and each turn is a
wake-up of another thread, so under load the tail grew with the number of sessions (the
benchmark's scenario 1: the bare relay with a thread per connection had a p99 of 3.7 to 4.8 x
stunnel's at 20 sessions, the same relay with one thread for all 0.8 to 1.6 x). One thread takes
whatever is ready in one pass and never hands the lock to another relay.

The planes meet through the same rules as before (:mod:`fixproxy.proxy.handover`): a relay's
commands still go through its own deque and wake-up pipe, which this loop polls; the end of a
relay is reported through the ``done`` callback given with it, from this thread, after every
one of its descriptors left the poll set (the caller closes the sockets then). A relay that
raises is failed alone (:meth:`SessionRelay.fail`: Logouts to both peers), the others go on;
if the loop itself breaks, every relay it holds is failed and later sessions keep their own
thread (:meth:`DataPlane.submit` refuses).

The thread runs for the server's life (started and waited for by trio, so the nursery stays
structured); :meth:`DataPlane.stop` makes it return once its relays have ended.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Final

from fixproxy.proxy.handover import RelayResult
from fixproxy.proxy.relay import SessionRelay

logger = logging.getLogger("fixproxy.relay")

_IN: Final = select.POLLIN
_DUE: Final = operator.attrgetter("due")

Done = Callable[[RelayResult], None]
"""Told how a relay ended, from the data plane's thread; must return at once."""


class _Hosted:
    """A relay in the loop: what it is registered for, and when it is next due."""

    __slots__ = ("descriptors", "done", "due", "masks", "relay")

    def __init__(self, relay: SessionRelay, done: Done) -> None:
        self.relay = relay
        self.done = done
        self.descriptors = relay.descriptors()
        self.masks = (0, 0)
        """The (engine, gateway) masks registered now; the wake-up pipe is always in."""
        self.due = 0.0
        """When to handle it even without events (the loop's monotonic clock)."""


class DataPlane:
    """One thread relaying every logged-on session (see the module's theory of operation)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inbox: list[_Hosted] = []
        self._running = False
        self._stopping = False
        self._closed = False
        self._started = threading.Event()
        self._hosted: dict[SessionRelay, _Hosted] = {}
        """The relays in the loop; written by its thread alone."""
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wait_started(self, timeout: float) -> bool:
        """Wait until :meth:`run` takes relays; False if it did not within ``timeout``."""
        return self._started.wait(timeout)

    @property
    def relaying(self) -> int:
        """How many sessions were handed over and have not ended (read from any thread)."""
        with self._lock:
            return len(self._hosted) + len(self._inbox)

    def submit(self, relay: SessionRelay, done: Done) -> bool:
        """Hand over a settled relay (:meth:`SessionRelay.run_logon` returned None);
        thread-safe. False: the loop does not run (not started, stopping, or broken), and the
        caller keeps relaying it in a thread of its own."""
        with self._lock:
            if not self._running or self._stopping:
                return False
            self._inbox.append(_Hosted(relay, done))
            self._wake()
        return True

    def stop(self) -> None:
        """Take no more relays; :meth:`run` returns once those it holds have ended."""
        with self._lock:
            self._stopping = True
            self._wake()

    def close(self) -> None:
        """Release the wake-up pipe; after :meth:`run` returned (or never ran)."""
        with self._lock:
            if self._closed:
                return
            self._closed = self._stopping = True
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _wake(self) -> None:
        """Make the loop look (the lock is held: the pipe cannot be closed meanwhile)."""
        if not self._closed:
            with contextlib.suppress(BlockingIOError):  # full of wake-ups: it will look
                os.write(self._wake_write, b"!")

    def run(self) -> None:
        """The thread's body: relay until stopped and empty. Never raises."""
        with self._lock:
            if self._stopping:
                return
            self._running = True
        self._started.set()
        hosted = self._hosted
        poller = select.poll()
        try:
            self._loop(poller, hosted)
        except Exception as exc:
            logger.exception("internal error in the data plane; its sessions are closed, "
                             "new ones get a thread each")
            with self._lock:
                self._stopping = True
                orphans, self._inbox = self._inbox, []
            for entry in [*hosted.values(), *orphans]:
                self._finish(poller, hosted, entry, entry.relay.fail(exc))
        finally:
            with self._lock:
                self._running = False

    def _loop(self, poller: select.poll, hosted: dict[SessionRelay, _Hosted]) -> None:
        wake = self._wake_read
        poller.register(wake, _IN)
        owners: dict[int, _Hosted] = {}
        clock = time.monotonic
        while True:
            if not hosted and self._idle_and_stopping():
                return
            due = min(map(_DUE, hosted.values()), default=math.inf)
            timeout = None if due == math.inf else max(0, math.ceil((due - clock()) * 1000))
            events = poller.poll(timeout)
            timers_due = due <= clock()
            if len(events) == 1 and not timers_due:
                # The usual wake-up: one descriptor of one session, nothing else due.
                entry = owners.get(events[0][0])
                if entry is not None:
                    self._handle(poller, hosted, entry, events, owners)
                    continue
            ready: dict[_Hosted, list[tuple[int, int]]] = {}
            for fd, mask in events:
                if fd == wake:
                    self._take_inbox(poller, hosted, owners)
                    continue
                entry = owners.get(fd)
                if entry is not None:
                    ready.setdefault(entry, []).append((fd, mask))
            if timers_due:
                now = clock()
                for entry in hosted.values():
                    if entry.due <= now and entry not in ready:
                        ready[entry] = []
            for entry, mine in ready.items():
                self._handle(poller, hosted, entry, mine, owners)

    def _handle(self, poller: select.poll, hosted: dict[SessionRelay, _Hosted], entry: _Hosted,
                events: list[tuple[int, int]], owners: dict[int, _Hosted]) -> None:
        """Let ``entry``'s relay act on its events (or its deadline), then wait for it again,
        or take it out once it has ended."""
        relay = entry.relay
        try:
            relay.handle(events)
        except Exception as exc:
            self._finish(poller, hosted, entry, relay.fail(exc), owners)
            return
        if relay.done:
            self._finish(poller, hosted, entry, relay.result(), owners)
        else:
            self._arm(poller, entry, owners)

    def _idle_and_stopping(self) -> bool:
        with self._lock:
            return self._stopping and not self._inbox

    def _take_inbox(self, poller: select.poll, hosted: dict[SessionRelay, _Hosted],
                    owners: dict[int, _Hosted]) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 512):
                pass
        with self._lock:  # moved under the lock, so that :attr:`relaying` counts each once
            arrived, self._inbox = self._inbox, []
            for entry in arrived:
                hosted[entry.relay] = entry
        for entry in arrived:
            wake, _, _ = entry.descriptors
            poller.register(wake, _IN)
            owners[wake] = entry
            self._arm(poller, entry, owners)

    @staticmethod
    def _arm(poller: select.poll, entry: _Hosted, owners: dict[int, _Hosted]) -> None:
        """Register what ``entry`` waits for now, and when it is due without events."""
        relay = entry.relay
        masks = relay.masks()
        if masks != entry.masks:
            # A descriptor waited on for nothing is taken out: poll reports POLLHUP whether
            # asked or not, and would spin the loop.
            _, engine_fd, gateway_fd = entry.descriptors
            for fd, old, new in ((engine_fd, entry.masks[0], masks[0]),
                                 (gateway_fd, entry.masks[1], masks[1])):
                if new == old:
                    continue
                if new:
                    poller.register(fd, new)
                    owners[fd] = entry
                elif old:
                    poller.unregister(fd)
            entry.masks = masks
        timeout = relay.timeout()
        entry.due = math.inf if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _finish(poller: select.poll, hosted: dict[SessionRelay, _Hosted], entry: _Hosted,
                result: RelayResult, owners: dict[int, _Hosted] | None = None) -> None:
        """Take ``entry`` out of the loop, then report its end (its sockets may then close
        and their numbers be reused)."""
        wake, engine_fd, gateway_fd = entry.descriptors
        for fd, registered in ((wake, entry.relay in hosted), (engine_fd, entry.masks[0]),
                               (gateway_fd, entry.masks[1])):
            if registered:
                with contextlib.suppress(KeyError):
                    poller.unregister(fd)
            if owners is not None and owners.get(fd) is entry:
                del owners[fd]
        hosted.pop(entry.relay, None)
        try:
            entry.done(result)
        except Exception:  # the control plane is gone (its loop ended): nobody to tell
            logger.exception("the end of a session relay could not be reported")
