"""``fixproxy run`` as a real process short of a resource, in front of the in-process simulator.

:func:`open_limited_proxy` writes a two-session configuration (the reload harness's writer,
with the metrics endpoint on a free loopback port and, optionally, a journal), starts
``fixproxy run`` under ``prlimit`` when an open-file limit is asked for, and waits until the
session listens. Leaving the block kills the process whatever happened, and closes every
connection the test opened through it.

:func:`mounted_tmpfs` mounts a small tmpfs for a test as root, and always unmounts it; when the
test cannot be root it skips, unless ``FIXPROXY_REQUIRE_NETNS`` is set (CI), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
import trio

from bench.proc import CLOCK_TICKS, cpu_ticks
from fixproxy.fix import tags
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimConfig, SimGateway
from support.e2e import LOOPBACK, E2EMaterial
from support.fleet import FIXPROXY, ProcessOutput, fleet_key
from support.reload_harness import Session, config_text, free_port

SESSION: Final = "res"
SECOND: Final = "res2"
"""A second session, with a key of its own, that logs on only when a test asks."""
SECOND_KEY: Final = fleet_key(2)
ENDPOINT: Final = "KalshiNR"
REQUIRE_ENV: Final = "FIXPROXY_REQUIRE_NETNS"


def open_fds(pid: int) -> int:
    """Open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def wait_for_fds(pid: int, done: Callable[[int], bool]) -> None:
    """Poll /proc until ``done`` holds for the descriptor count of process ``pid``; bounded
    by the caller's guard."""
    # Another process's descriptor table has no event to wait on: polling is the only way.
    while not done(open_fds(pid)):  # noqa: ASYNC110
        await trio.sleep(0.01)


@dataclass(slots=True, kw_only=True)
class LimitedProxy:
    """The simulator in this process and ``fixproxy run`` as a real one."""

    material: E2EMaterial
    sim: SimGateway
    process: trio.Process
    output: ProcessOutput
    listen: dict[str, tuple[str, int]]
    """Session name -> its listen address."""
    metrics: tuple[str, int]
    state_dir: Path
    journal_dir: Path | None
    _streams: list[trio.abc.AsyncResource] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the process has used so far."""
        return cpu_ticks(self.pid) / CLOCK_TICKS

    async def connect(self, session: str = SESSION) -> trio.SocketStream:
        """A plain TCP connection to a session's listener, closed when the block ends."""
        stream = await trio.open_tcp_stream(*self.listen[session])
        self._streams.append(stream)
        return stream

    def _key(self, session: str) -> str:
        return self.material.api_key if session == SESSION else SECOND_KEY

    async def engine(self, session: str = SESSION) -> ScriptedEngine:
        """A scripted engine connected with the session's CompIDs (not yet logged on)."""
        return ScriptedEngine(await self.connect(session), sender=self._key(session),
                              target=ENDPOINT)

    async def logged_on(self, session: str = SESSION, *, reset: bool | None = None
                        ) -> ScriptedEngine:
        """An engine logged on through fixproxy; fails unless the gateway accepts it."""
        engine = await self.engine(session)
        answer = await engine.logon(reset=reset)
        assert answer is not None and answer.msg_type == tags.MT_LOGON, \
            f"{answer}\n{self.output.text}"
        return engine

    async def scrape(self) -> str:
        """The text of ``/metrics``."""
        url = "http://{}:{}/metrics".format(*self.metrics)

        def get() -> str:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return str(answer.read().decode())

        return await trio.to_thread.run_sync(get)

    async def sample(self, name: str, **labels: str) -> float | None:
        """One sample of ``/metrics``, its labels given in any order; None when absent."""
        for line in (await self.scrape()).splitlines():
            match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
            if match is None or match[1] != name:
                continue
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
            if found == labels:
                return float(match[3])
        return None

    async def aclose_streams(self) -> None:
        with trio.CancelScope(shield=True):  # a timed-out test still closes every stream
            for stream in self._streams:
                await trio.aclose_forcefully(stream)
        self._streams.clear()


@asynccontextmanager
async def open_limited_proxy(material: E2EMaterial, workdir: Path, *, guard: float,
                             nofile: int | None = None, state_dir: Path | None = None,
                             journal_dir: Path | None = None, session_extra: str = "",
                             proxy_extra: str = "", tables: str = ""
                             ) -> AsyncIterator[LimitedProxy]:
    """The simulator and ``fixproxy run`` with two sessions (:data:`SESSION` and
    :data:`SECOND`), all within ``guard`` seconds.

    Args:
        nofile: the process's open-file limit (soft and hard), through ``prlimit``.
        state_dir: ``[proxy] state_dir`` (default: a fresh directory under ``workdir``).
        journal_dir: ``[proxy] journal_dir``, when the session keeps a journal.
        session_extra: further lines of the ``[[session]]`` table.
        proxy_extra: further lines of the ``[proxy]`` table.
        tables: further top-level tables (``[backoff]`` ...), after the session.
    """
    sim = SimGateway(SimConfig(ports={ENDPOINT: 0},
                               keys=dict.fromkeys((material.api_key, SECOND_KEY),
                                                  material.public_key)),
                     material.certs.server_context())
    state = state_dir if state_dir is not None else workdir / "state"
    listen = {SESSION: (LOOPBACK, free_port()), SECOND: (LOOPBACK, free_port())}
    metrics = (LOOPBACK, free_port())
    prefix: list[str] = []
    if nofile is not None:
        tool = shutil.which("prlimit")
        if tool is None:
            pytest.skip("prlimit (util-linux) is not installed")
        prefix = [tool, f"--nofile={nofile}:{nofile}"]
    with trio.fail_after(guard):
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(sim.serve)
            extra = proxy_extra
            if journal_dir is not None:
                extra += f'\njournal_dir = "{journal_dir}"'
            text = config_text(material, addresses[ENDPOINT][1], state,
                               [Session(SESSION, listen[SESSION][1], key=material.api_key),
                                Session(SECOND, listen[SECOND][1], key=SECOND_KEY)],
                               extra=extra, session_extra=session_extra)
            # No readiness probe after the one at start: a probe opens a gateway connection
            # at a moment of its own, which would take the one descriptor a test frees for
            # an engine.
            text = text.replace('[metrics]\nlisten = ""',
                                '[metrics]\nlisten = "{}:{}"\nreadiness_interval = 3600'
                                .format(*metrics)) + tables
            path = workdir / "fixproxy.toml"
            path.write_text(text)
            process = await trio.lowlevel.open_process(
                [*prefix, *FIXPROXY, "run", "--config", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                assert process.stderr is not None
                output = ProcessOutput(process.stderr)
                nursery.start_soon(output.pump)
                proxy = LimitedProxy(material=material, sim=sim, process=process,
                                     output=output, listen=listen, metrics=metrics,
                                     state_dir=state, journal_dir=journal_dir)
                try:
                    await output.wait_for("listening on", len(listen))
                    yield proxy
                except BaseException:
                    print(f"fixproxy's log:\n{output.text}")  # shown with the failure
                    raise
                finally:
                    await proxy.aclose_streams()
            finally:
                if process.returncode is None:
                    process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
                nursery.cancel_scope.cancel()


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=``) on ``directory``, unmounted on the way out.

    Skips when the test is not root or mount fails, unless ``FIXPROXY_REQUIRE_NETNS`` is set:
    then it fails, so CI cannot pass without the test having run.
    """
    reason = None
    if os.geteuid() != 0:
        reason = "mounting a tmpfs needs root"
    elif shutil.which("mount") is None:
        reason = "mount(8) is not installed"
    directory.mkdir(parents=True, exist_ok=True)
    if reason is None:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                               "tmpfs", str(directory)],
                              capture_output=True, text=True, check=False, timeout=30)
        if done.returncode != 0:
            reason = f"mount -t tmpfs failed: {done.stderr.strip()}"
    if reason is not None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{reason}, and {REQUIRE_ENV} is set")
        pytest.skip(reason)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False, timeout=30,
                       capture_output=True)
