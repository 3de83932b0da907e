"""A real Prometheus server for tests: started in a temporary directory, queried over HTTP.

Theory of operation
-------------------
The dashboard and the alert rules are PromQL that only a Prometheus can judge: a name that
/metrics does not expose, a selector that matches nothing, a rule that does not parse or never
fires. So the tests run the Debian ``prometheus`` binary itself against fixproxy's metrics
endpoint instead of imitating its evaluator. It listens on ``127.0.0.1:0``; the port it bound
is read from its log line ``msg="Listening on" address=...``, so no free port is guessed and no
other process can take it in between. Its data directory lives under the test's temporary
directory, every HTTP request has a timeout, every wait has a deadline, and the process is
terminated (then killed) when the block ends, whatever happens inside it.

Prometheus is an external process, so waiting for it to have scraped or evaluated something
means asking its HTTP API again until the answer comes or the deadline passes; each wait says
what it waited for when it gives up, with the tail of the server's log.

The configuration is written as JSON, which is YAML, so no YAML library is needed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

from fixproxy.errors import FixProxyError

INSTALL_HINT: Final = "apt-get install prometheus"
"""How to get ``prometheus`` and ``promtool`` (the Debian package ships both)."""
START_TIMEOUT: Final = 30.0
"""Seconds Prometheus may take to open its storage, listen and report ready."""
STOP_TIMEOUT: Final = 10.0
"""Seconds Prometheus gets to exit after SIGTERM before it is killed."""
HTTP_TIMEOUT: Final = 5.0
"""Seconds one request to the HTTP API may take."""
POLL_INTERVAL: Final = 0.1
"""Pause between two questions to the API while waiting for it to catch up."""
LOG_LINES: Final = 200
"""Lines of Prometheus's log kept for failure messages."""
_LISTENING: Final = re.compile(r'msg="Listening on" address=(\S+)')
_FOR_LINE: Final = re.compile(r"^(\s*)for:\s*\S+\s*$", re.MULTILINE)

T = TypeVar("T")


class PrometheusError(FixProxyError):
    """Prometheus did not start, answered with an error, or a wait ran out."""


def require_tool(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; fails the test (never skips) if missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed or not on PATH; install it with: {INSTALL_HINT}")
    return path


def rules_for_test(source: Path, destination: Path, *, hold: str = "1s") -> Path:
    """Copy an alerting rule file with every ``for:`` shortened to ``hold``.

    Alerts then go pending and firing within a few evaluations instead of minutes; the
    expressions, labels and annotations stay exactly as operators load them.
    """
    text = source.read_text(encoding="utf-8")
    shortened, count = _FOR_LINE.subn(lambda match: f"{match.group(1)}for: {hold}", text)
    if count == 0:
        raise PrometheusError(f"{source}: no `for:` line to shorten")
    destination.write_text(shortened, encoding="utf-8")
    return destination


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One /metrics endpoint to scrape, with labels that tell it apart in queries."""

    address: tuple[str, int]
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def instance(self) -> str:
        """The ``instance`` label Prometheus gives the target's series."""
        return f"{self.address[0]}:{self.address[1]}"


def write_config(path: Path, *, job: str, targets: Sequence[ScrapeTarget],
                 rule_files: Sequence[Path] = (), interval: str = "1s") -> Path:
    """Write a prometheus.yml scraping ``targets`` as ``job`` every ``interval``."""
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": interval},
        "rule_files": [str(rule_file) for rule_file in rule_files],
        "scrape_configs": [{
            "job_name": job,
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [target.instance], "labels": dict(target.labels)}
                               for target in targets],
        }],
    }
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


class PrometheusServer:
    """A running Prometheus and its HTTP API (``/api/v1``)."""

    def __init__(self, base_url: str, log: deque[str]) -> None:
        self.base_url = base_url
        self._log = log

    def log_tail(self, lines: int = 30) -> str:
        """The last lines Prometheus logged, for failure messages."""
        return "\n".join(list(self._log)[-lines:])

    def api(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``.

        Raises:
            PrometheusError: the request failed or Prometheus answered ``status: error``
                (the message carries Prometheus's error text, e.g. a PromQL parse error).
        """
        url = f"{self.base_url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            exc.close()
        except (OSError, urllib.error.URLError) as exc:
            raise PrometheusError(f"GET {url}: {exc}") from exc
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise PrometheusError(f"GET {url}: not JSON: {body[:200]!r}") from exc
        if answer.get("status") != "success":
            raise PrometheusError(f"GET {url}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def is_ready(self) -> bool:
        """True once ``/-/ready`` answers 200: storage open, queries and scrapes running."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/-/ready",
                                        timeout=HTTP_TIMEOUT) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate ``expr`` now; the result as a list of series (``metric``, ``value``).

        A scalar or string result becomes one series without labels.
        """
        data = self.api("query", [("query", expr)])
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Every pending and firing alert, each with ``labels`` and ``state``."""
        return list(self.api("alerts")["alerts"])

    def alerting_rules(self) -> list[dict[str, Any]]:
        """Every alerting rule with its ``query``, ``health``, ``lastError`` and alerts."""
        groups = self.api("rules", [("type", "alert")])["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def wait_for(self, what: str, check: Callable[[], T | None], *,
                 timeout: float = START_TIMEOUT) -> T:
        """Ask ``check`` until it returns something other than None, at most ``timeout`` s.

        Raises:
            PrometheusError: the deadline passed; the message says ``what`` was awaited.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise PrometheusError(f"gave up after {timeout:g} s waiting for {what}; "
                                      f"Prometheus log:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL)

    def wait_for_scrapes(self, since: float, *, targets: int, count: int = 2,
                         timeout: float = START_TIMEOUT) -> None:
        """Wait until each of ``targets`` targets was scraped ``count`` times after ``since``
        (wall-clock seconds), so rates and increases see every event before it."""
        def scraped() -> bool | None:
            window_ms = max(1, int((time.time() - since) * 1000))
            series = self.query(f"count_over_time(up[{window_ms}ms]) >= {count}")
            return True if len(series) >= targets else None

        self.wait_for(f"{count} scrapes of {targets} target(s)", scraped, timeout=timeout)


def _read_log(stream: Any, log: deque[str], listening: threading.Event,
              address: list[str]) -> None:
    """Drain Prometheus's log (a full pipe would stall it) and note its listen address."""
    for line in stream:
        log.append(line.rstrip("\n"))
        match = _LISTENING.search(line)
        if match and not listening.is_set():
            address.append(match.group(1))
            listening.set()
    listening.set()  # the log ended: the process is gone; the waiter finds no address


@contextmanager
def run_prometheus(workdir: Path, config: Path, *,
                   timeout: float = START_TIMEOUT) -> Iterator[PrometheusServer]:
    """Run Prometheus with ``config`` on a free loopback port until the block ends.

    Raises:
        PrometheusError: it exited, did not listen, or did not get ready within ``timeout``.
    """
    binary = require_tool("prometheus")
    storage = workdir / "prometheus-data"
    storage.mkdir(parents=True, exist_ok=True)
    log: deque[str] = deque(maxlen=LOG_LINES)
    listening = threading.Event()
    address: list[str] = []
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={storage}",
         "--web.listen-address=127.0.0.1:0", "--storage.tsdb.retention.time=1h",
         "--log.level=info"],
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
    assert process.stderr is not None
    reader = threading.Thread(target=_read_log, args=(process.stderr, log, listening, address),
                              name="prometheus-log", daemon=True)
    reader.start()
    try:
        if not listening.wait(timeout) or not address:
            raise PrometheusError(f"Prometheus did not report its listen address within "
                                  f"{timeout:g} s (exit code {process.poll()}); log:\n"
                                  + "\n".join(log))
        server = PrometheusServer(f"http://{address[0]}", log)

        def ready() -> bool | None:
            if process.poll() is not None:
                raise PrometheusError(f"Prometheus exited with {process.returncode}; log:\n"
                                      + server.log_tail())
            return True if server.is_ready() else None

        server.wait_for("Prometheus to report ready", ready, timeout=timeout)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        reader.join(STOP_TIMEOUT)
        process.stderr.close()
