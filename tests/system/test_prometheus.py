"""The Grafana dashboard and the alert rules, proved against fixproxy and a real Prometheus.

Four fixproxies run in front of four strict simulated gateways, in one trio loop on a thread of
its own, for the whole module (each scenario needs its own gateway faults or session settings):

* ``traffic``: an engine logs on, sends orders and a TestRequest, and provokes a Reject (35=3,
  a NewOrderSingle without ClOrdID) and a BusinessMessageReject (35=j, a MsgType the gateway
  does not support). Later the gateway drops the connection: the session goes down.
* ``pin``: the session pins a certificate the gateway does not present.
* ``silent``: the gateway goes silent right after the Logon (HeartBtInt 4): heartbeat timeout.
* ``maintenance``: the session sits inside a maintenance window.

A real Prometheus scrapes all four every second and evaluates a copy of grafana/alerts.yml
whose ``for:`` durations are cut to 1 s. The tests run every dashboard expression and every
rule through its API and watch alerts fire. The trio loop lives on a thread so the tests can
block on Prometheus's HTTP API while the proxies keep serving; they drive the engines by
calling into that loop (``trio.from_thread.run``).
"""

from __future__ import annotations

import base64
import json
import queue
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar
from zoneinfo import ZoneInfo

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from support.e2e import E2EMaterial, ProxyPair, make_material, open_proxy_pair
from support.prometheus import (
    HTTP_TIMEOUT,
    PrometheusServer,
    ScrapeTarget,
    require_tool,
    rules_for_test,
    run_prometheus,
    write_config,
)
from support.recovery_stack import dead_port

from fixproxy.config.model import ProxyConfig, RecoveryConfig
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, utc_timestamp
from fixproxy.session.schedule import ALL_DAYS, MaintenanceSchedule
from fixproxy.sim.engine import ScriptedEngine
from fixproxy.sim.gateway import SimFaults

T = TypeVar("T")

REPO: Final = Path(__file__).resolve().parents[2]
DASHBOARD: Final = REPO / "grafana" / "fixproxy-dashboard.json"
ALERTS: Final = REPO / "grafana" / "alerts.yml"
EXAMPLE_CONFIG: Final = REPO / "grafana" / "prometheus.yml"

JOB: Final = "fixproxy"
"""The job name of grafana/prometheus.yml, which FixproxyScrapeFailing matches."""
SCENARIOS: Final = ("traffic", "pin", "silent", "maintenance")
FLEET_BOUND: Final = 120.0
"""Seconds the module's proxies may live; the module takes about 15."""
STEP_TIMEOUT: Final = 10.0
"""Seconds one scripted exchange with a proxy may take."""
PROM_TIMEOUT: Final = 30.0
"""Seconds Prometheus may take to see something that already happened (1 s scrapes)."""
ORDERS: Final = 3
TRAFFIC_HEART_BT_INT: Final = 60
"""Long enough that the idle traffic session outlives the module."""
TRAFFIC_MESSAGES: Final = ORDERS + 3
"""What the traffic engine sends after its Logon: the orders, a TestRequest, two rejected."""
SILENT_HEART_BT_INT: Final = 4
"""The smallest HeartBtInt fixproxy and Kalshi accept."""
SILENT_GRACE: Final = 0.5
SILENCE: Final = 2 * SILENT_HEART_BT_INT + SILENT_GRACE
"""Seconds after the Logon at which the silent gateway's session is declared gone."""
DROP_COPY_KEY: Final = "6a1d4f3b-2c5e-4d7f-8b9a-0e1c2d3f4a5b"
WRONG_PIN: Final = "sha256/" + base64.b64encode(bytes(range(32))).decode()
SYMBOL: Final = "HIGHNY-23DEC31"
SUBSTITUTIONS: Final = {
    "session": ".*", "__rate_interval": "1m", "__interval": "15s", "__range": "5m",
}
"""Values for the dashboard's variables when its queries are sent to Prometheus directly."""
_VARIABLE: Final = re.compile(r"\$\{?(\w+)\}?")
_METRIC: Final = re.compile(r"\b(fixproxy_[A-Za-z0-9_:]*)(\{[^}]*\})?")
_LABEL_VALUES: Final = re.compile(r"^label_values\((\w+),\s*(\w+)\)$")
_SESSION_FILTER: Final = 'session=~"$session"'


# --- the module's fixproxies, on a trio loop of their own -----------------------------------


class _FleetThread:
    """Runs the four proxy pairs in ``trio.run`` on a thread of its own until stopped."""

    def __init__(self, material: E2EMaterial) -> None:
        self.material = material
        self._handoff: queue.Queue[tuple[trio.lowlevel.TrioToken, trio.Event,
                                         dict[str, ProxyPair]] | BaseException] = queue.Queue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="fixproxy-fleet", daemon=True)

    def start(self) -> dict[str, ProxyPair]:
        """Start the thread; return the pairs once all four serve."""
        self.thread.start()
        handed = self._handoff.get(timeout=STEP_TIMEOUT)
        if isinstance(handed, BaseException):
            raise handed
        self._token, self._stop, pairs = handed
        return pairs

    def call(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``afn(*args)`` in the proxies' trio loop and return its result."""
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    def stop(self) -> None:
        """Close every pair and end the loop; raise what ended it, if not the stop."""
        if self._stop is not None:
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self.thread.join(STEP_TIMEOUT)
        assert not self.thread.is_alive(), "the proxies' trio loop did not stop"
        if self.error is not None and self._stop is not None:  # else start() raised it
            raise self.error

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # handed to the test thread, which raises it
            self.error = exc
            self._handoff.put(exc)

    async def _serve(self) -> None:
        material = self.material
        blocker = material.workdir / "silent-journal-parent"
        blocker.write_bytes(b"")
        settings: dict[str, dict[str, Any]] = {
            # The gateway drops TCP on the first message after the traffic: session down. Its
            # drop copy is unreachable, so the Logon after that fails to recover.
            "traffic": {"faults": SimFaults(drop_after_messages=TRAFFIC_MESSAGES + 1),
                        "session_overrides": {"recovery": RecoveryConfig(
                            api_key=DROP_COPY_KEY, private_key=material.private_key,
                            host="127.0.0.1", port=dead_port(), tls=material.tls_policy(),
                            timeout=2.0)}},
            "pin": {"tls": material.tls_policy(pins=(WRONG_PIN,))},
            # Its state on disk, and a journal directory that cannot be made (its parent is
            # a file): the journal fails, and the failed-write alert fires.
            "silent": {"faults": SimFaults(silent_after_messages=0),
                       "session_overrides": {"liveness_grace": SILENT_GRACE},
                       "config_overrides": {"proxy": ProxyConfig(
                           state_dir=material.workdir / "silent-state",
                           journal_dir=blocker / "journal")}},
            "maintenance": {"config_overrides": {"maintenance": _maintenance_now()}},
        }
        async with AsyncExitStack() as stack:
            pairs = {
                name: await stack.enter_async_context(open_proxy_pair(
                    material, metrics_endpoint=True, timeout=FLEET_BOUND, **settings[name]))
                for name in SCENARIOS}
            stop = trio.Event()
            self._handoff.put((trio.lowlevel.current_trio_token(), stop, pairs))
            await stop.wait()


@dataclass(slots=True)
class Fleet:
    """The running proxies, their engines and the Prometheus scraping them."""

    runner: _FleetThread
    pairs: dict[str, ProxyPair]
    engines: dict[str, ScriptedEngine]
    prometheus: PrometheusServer

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``afn(*args)`` in the proxies' trio loop and return its result."""
        return self.runner.call(afn, *args)

    def instance(self, scenario: str) -> str:
        """The ``instance`` label of the scenario's metrics endpoint."""
        address = self.pairs[scenario].metrics_address
        assert address is not None
        return f"{address[0]}:{address[1]}"


def _maintenance_now() -> MaintenanceSchedule:
    """A daily window from an hour ago to an hour ahead: maintenance for the whole module."""
    now = datetime.now(UTC)
    return MaintenanceSchedule(days=ALL_DAYS, start=(now - timedelta(hours=1)).time(),
                               end=(now + timedelta(hours=1)).time(), timezone=ZoneInfo("UTC"))


async def _start_traffic(pair: ProxyPair) -> ScriptedEngine:
    """Log on, trade, and provoke one Reject and one BusinessMessageReject; stay logged on."""
    with trio.fail_after(STEP_TIMEOUT):
        engine = await pair.connect_engine()
        answer = await engine.logon(heart_bt_int=TRAFFIC_HEART_BT_INT)
        assert answer is not None and answer.msg_type == tags.MT_LOGON, answer
        for _ in range(ORDERS):
            cl_ord_id = await engine.new_order(SYMBOL)
            report = await engine.receive_type(tags.MT_EXECUTION_REPORT)
            assert report.get(11) == cl_ord_id
        await engine.test_peer()
        # A NewOrderSingle without ClOrdID (11): the gateway answers Reject 373=1.
        await engine.send(tags.MT_NEW_ORDER_SINGLE, [
            (38, 10), (40, 2), (44, 50), (54, 1), (55, SYMBOL), (59, 1), (60, utc_timestamp())])
        reject = await engine.receive_type(tags.MT_REJECT)
        assert reject.get(tags.SESSION_REJECT_REASON) == b"1", reject
        # OrderStatusRequest (35=H) is not supported: BusinessMessageReject 380=3.
        await engine.send(b"H", [(11, b"status-1"), (54, 1), (55, SYMBOL)])
        business = await engine.receive_type(tags.MT_BUSINESS_REJECT)
        assert business.get(tags.BUSINESS_REJECT_REASON) == b"3", business
        sent_after_logon = sum(1 for direction, _ in engine.transcript if direction == "sent") - 1
        assert sent_after_logon == TRAFFIC_MESSAGES
    return engine


async def _refused_logon(pair: ProxyPair) -> FixMessage:
    """Send a Logon that fixproxy must refuse; return its Logout."""
    with trio.fail_after(STEP_TIMEOUT):
        engine = await pair.connect_engine()
        answer = await engine.logon()
        assert answer is not None and answer.msg_type == tags.MT_LOGOUT, answer
        return answer


async def _log_on(pair: ProxyPair, heart_bt_int: int) -> ScriptedEngine:
    with trio.fail_after(STEP_TIMEOUT):
        engine = await pair.connect_engine()
        answer = await engine.logon(heart_bt_int=heart_bt_int)
        assert answer is not None and answer.msg_type == tags.MT_LOGON, answer
        return engine


async def _logout_received(engine: ScriptedEngine, within: float) -> FixMessage:
    """The Logout fixproxy sends the engine when the session ends on its own."""
    with trio.fail_after(within):
        return await engine.receive_type(tags.MT_LOGOUT)


async def _gateway_drops(engine: ScriptedEngine) -> FixMessage:
    """One more order: the traffic gateway drops TCP on it, and fixproxy says so."""
    with trio.fail_after(STEP_TIMEOUT):
        await engine.new_order(SYMBOL)
        return await engine.receive_type(tags.MT_LOGOUT)


def _series_for(prometheus: PrometheusServer, expr: str, instance: str) -> bool | None:
    series = prometheus.query(expr)
    return True if any(s["metric"].get("instance") == instance for s in series) else None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The four scenarios, driven to their steady state and scraped by Prometheus."""
    require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    runner = _FleetThread(make_material(workdir / "material"))
    try:
        pairs = runner.start()
        # The silent gateway's clock starts first: its timeout is the longest wait.
        silent_logon = time.monotonic()
        engines = {"silent": runner.call(_log_on, pairs["silent"], SILENT_HEART_BT_INT)}
        pin_logout = runner.call(_refused_logon, pairs["pin"])
        assert "pins" in (pin_logout.get_str(tags.TEXT) or ""), pin_logout
        runner.call(_refused_logon, pairs["maintenance"])
        engines["traffic"] = runner.call(_start_traffic, pairs["traffic"])

        targets = []
        for name in SCENARIOS:
            address = pairs[name].metrics_address
            assert address is not None
            targets.append(ScrapeTarget(address, {"scenario": name}))
        config = write_config(workdir / "prometheus.yml", job=JOB, targets=targets,
                              rule_files=[rules_for_test(ALERTS, workdir / "alerts-test.yml")])
        with run_prometheus(workdir, config) as prometheus:
            fleet = Fleet(runner=runner, pairs=pairs, engines=engines, prometheus=prometheus)
            remaining = SILENCE - (time.monotonic() - silent_logon)
            logout = runner.call(_logout_received, engines["silent"], remaining + STEP_TIMEOUT)
            assert "sent nothing" in (logout.get_str(tags.TEXT) or ""), logout
            silent = fleet.instance("silent")
            prometheus.wait_for(
                "the heartbeat timeout in Prometheus",
                lambda: _series_for(prometheus, "fixproxy_heartbeat_timeouts_total > 0", silent),
                timeout=PROM_TIMEOUT)
            settled = time.time()
            prometheus.wait_for_scrapes(settled, targets=len(SCENARIOS), timeout=PROM_TIMEOUT)
            prometheus.wait_for("every rule evaluated after the traffic",
                                lambda: _evaluated_after(prometheus, settled),
                                timeout=PROM_TIMEOUT)
            yield fleet
    finally:
        runner.stop()


def _evaluated_after(prometheus: PrometheusServer, moment: float) -> bool | None:
    """True once every alerting rule was evaluated after ``moment`` (wall-clock seconds)."""
    rules = prometheus.alerting_rules()
    if not rules:
        return None
    for rule in rules:
        evaluated = datetime.fromisoformat(rule["lastEvaluation"]).timestamp()
        if evaluated <= moment:
            return None
    return True


# --- what the dashboard and the rule file contain -------------------------------------------


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and annotations."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            expr = node.get("expr")
            if isinstance(expr, str):
                found.append(expr)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard.get("panels", []))
    walk(dashboard.get("annotations", {}))
    return found


def template_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, label) of every ``label_values(metric, label)`` variable."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        match = _LABEL_VALUES.match(variable["definition"])
        assert match, f"variable {variable['name']}: unexpected query {variable['definition']}"
        found.append((match.group(1), match.group(2)))
    return found


def substitute(expr: str) -> str:
    """The expression with the dashboard's variables replaced by values Prometheus takes."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in SUBSTITUTIONS, f"unknown dashboard variable ${name} in {expr}"
        return SUBSTITUTIONS[name]

    return _VARIABLE.sub(value, expr)


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\S+)\s*$", ALERTS.read_text(encoding="utf-8"),
                      re.MULTILINE)


def scrape(address: tuple[str, int]) -> str:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics",
                                timeout=HTTP_TIMEOUT) as response:
        return bytes(response.read()).decode()


@dataclass(frozen=True, slots=True)
class Exposition:
    """What /metrics exposes: series names (as stored) and each name's label names."""

    labels: dict[str, set[str]]
    families: dict[str, str]
    """Family name (``_total`` and the histogram suffixes stripped) -> type."""

    def explain(self, name: str) -> str:
        family_type = self.families.get(name)
        if family_type == "counter":
            return f"{name} is a counter family; its series is {name}_total"
        if family_type == "histogram":
            return f"{name} is a histogram; use {name}_bucket, {name}_sum or {name}_count"
        return f"{name} is not exposed"


def exposition(texts: list[str]) -> Exposition:
    """Series names and label names of the text expositions ``texts``, merged."""
    labels: dict[str, set[str]] = {}
    families: dict[str, str] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
    return Exposition(labels=labels, families=families)


# --- 1. the files Prometheus loads ----------------------------------------------------------


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout, result.stdout
    assert len(alert_names()) >= 7


def test_promtool_accepts_the_example_scrape_config() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "config", str(EXAMPLE_CONFIG)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_for_test_shortens_every_hold(tmp_path: Path) -> None:
    copy = rules_for_test(ALERTS, tmp_path / "copy.yml").read_text(encoding="utf-8")
    holds = re.findall(r"^\s*for:\s*(\S+)\s*$", copy, re.MULTILINE)
    assert holds == ["1s"] * len(alert_names())


def test_the_dashboard_asks_for_its_data_source_on_import() -> None:
    dashboard = _dashboard()
    (data_source,) = dashboard["__inputs"]
    assert data_source["type"] == "datasource"
    assert data_source["pluginId"] == "prometheus"
    # Grafana's import dialog replaces every ${DS_...} of an input with the chosen source; the
    # panels use the data source variable, whose default becomes that choice.
    text = DASHBOARD.read_text(encoding="utf-8")
    placeholders = set(re.findall(r"\$\{(DS_[A-Z0-9_]+)\}", text))
    assert placeholders == {data_source["name"]}
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == f"${{{data_source['name']}}}"
    panel_sources = {json.dumps(panel.get("datasource"), sort_keys=True)
                     for panel in dashboard["panels"] if panel.get("targets")}
    assert panel_sources == {json.dumps({"type": "prometheus", "uid": "${datasource}"},
                                        sort_keys=True)}


def test_the_dashboard_states_the_grafana_it_needs() -> None:
    dashboard = _dashboard()
    requires = {(item["type"], item["id"]): item for item in dashboard["__requires"]}
    version = requires[("grafana", "grafana")]["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert ("datasource", "prometheus") in requires
    panel_types = {panel["type"] for panel in dashboard["panels"] if panel["type"] != "row"}
    assert {key[1] for key in requires if key[0] == "panel"} == panel_types
    # The README tells the operator the same minimum.
    major_minor = ".".join(version.split(".")[:2])
    readme = (REPO / "grafana" / "README.md").read_text(encoding="utf-8")
    assert f"Grafana {major_minor} or later" in readme


# --- 2. the dashboard names only what /metrics exposes --------------------------------------


@pytest.mark.slow
def test_dashboard_names_only_exposed_metrics(fleet: Fleet) -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert ("fixproxy_session_up", "session") in template_queries(dashboard)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"

    exposed = exposition([scrape(pair.metrics_address) for pair in fleet.pairs.values()
                          if pair.metrics_address is not None])
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) >= 20
    names = {metric for metric, _ in template_queries(dashboard)}
    missing = []
    unfiltered = []
    for expr in expressions:
        for match in _METRIC.finditer(expr):
            name, selector = match.group(1), match.group(2) or ""
            names.add(name)
            if name not in exposed.labels:
                missing.append(f"{name} ({exposed.explain(name)}) in: {expr}")
            elif "session" in exposed.labels[name] and _SESSION_FILTER not in selector:
                unfiltered.append(f"{name} in: {expr}")
    assert not missing, "the dashboard names metrics /metrics does not expose:\n" + \
        "\n".join(missing)
    assert not unfiltered, f"selectors of session metrics without {_SESSION_FILTER}:\n" + \
        "\n".join(unfiltered)
    # The panels the operator needs are there.
    for needed in ("fixproxy_session_state", "fixproxy_logon_seconds_bucket",
                   "fixproxy_messages_total", "fixproxy_bytes_total", "fixproxy_rejects_total",
                   "fixproxy_heartbeat_timeouts_total", "fixproxy_relay_latency_seconds_bucket",
                   "fixproxy_clock_skew_seconds",
                   "fixproxy_certificate_expiry_timestamp_seconds",
                   "fixproxy_sequence_number", "fixproxy_last_message_age_seconds",
                   "fixproxy_maintenance_active", "fixproxy_engine_connections_total",
                   "fixproxy_upstream_connects_total", "fixproxy_logouts_total",
                   "fixproxy_build_info", "fixproxy_recovery_total",
                   "fixproxy_recovered_reports_total"):
        assert needed in names, f"the dashboard does not show {needed}"
    timelines = [panel for panel in dashboard["panels"] if panel["type"] == "state-timeline"]
    assert any("fixproxy_session_state" in target["expr"]
               for panel in timelines for target in panel["targets"])


@pytest.mark.slow
def test_alert_rules_name_only_exposed_metrics(fleet: Fleet) -> None:
    exposed = exposition([scrape(pair.metrics_address) for pair in fleet.pairs.values()
                          if pair.metrics_address is not None])
    names = set(_METRIC.findall(ALERTS.read_text(encoding="utf-8")))
    assert len(names) >= 7
    missing = [f"{name}: {exposed.explain(name)}" for name, _ in names
               if name not in exposed.labels]
    assert not missing, "alerts.yml names metrics /metrics does not expose:\n" + \
        "\n".join(missing)


# --- 3. every query returns data from a real Prometheus -------------------------------------


@pytest.mark.slow
def test_every_dashboard_query_returns_series(fleet: Fleet) -> None:
    prometheus = fleet.prometheus
    dashboard = _dashboard()
    empty = []
    for expr in dashboard_expressions(dashboard):
        query = substitute(expr)
        if not prometheus.query(query):  # a parse error raises, naming the query
            empty.append(query)
    assert not empty, "dashboard queries without a single series:\n" + "\n".join(empty)
    for metric, label in template_queries(dashboard):
        values = prometheus.api(f"label/{label}/values", [("match[]", metric)])
        assert "e2e" in values, (metric, label, values)


@pytest.mark.slow
def test_every_alert_rule_evaluates(fleet: Fleet) -> None:
    prometheus = fleet.prometheus
    rules = prometheus.alerting_rules()
    assert sorted(rule["name"] for rule in rules) == sorted(alert_names())
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        prometheus.query(rule["query"])  # raises with Prometheus's error text
        assert rule["annotations"].get("summary"), rule["name"]
        assert rule["annotations"].get("description"), rule["name"]


# --- 4. alerts fire for real ----------------------------------------------------------------


def _active(prometheus: PrometheusServer, alert: str, instance: str) -> list[str]:
    """States of ``alert``'s active (pending or firing) alerts for ``instance``."""
    return [entry["state"] for entry in prometheus.alerts()
            if entry["labels"].get("alertname") == alert
            and entry["labels"].get("instance") == instance]


def _firing(prometheus: PrometheusServer, alert: str, instance: str) -> bool | None:
    return True if "firing" in _active(prometheus, alert, instance) else None


@pytest.mark.slow
def test_alerts_fire(fleet: Fleet) -> None:
    prometheus = fleet.prometheus
    traffic = fleet.instance("traffic")

    def wait_firing(alert: str, scenario: str) -> None:
        instance = fleet.instance(scenario)
        prometheus.wait_for(f"{alert} firing for the {scenario} scenario",
                            lambda: _firing(prometheus, alert, instance), timeout=PROM_TIMEOUT)

    wait_firing("FixproxyPinMismatch", "pin")
    wait_firing("FixproxyHeartbeatTimeouts", "silent")
    wait_firing("FixproxyStateWriteFailing", "silent")
    wait_firing("FixproxySessionDown", "pin")

    # The traffic session is up: no alert about it, rejects other than 380=8 included.
    prometheus.wait_for("the traffic session up in Prometheus",
                        lambda: _series_for(prometheus, "fixproxy_session_up == 1", traffic),
                        timeout=PROM_TIMEOUT)
    seen_up = time.time()
    prometheus.wait_for("an evaluation after the session was seen up",
                        lambda: _evaluated_after(prometheus, seen_up), timeout=PROM_TIMEOUT)
    assert prometheus.query(f'fixproxy_rejects_total{{instance="{traffic}"}}')
    for alert in ("FixproxySessionDown", "FixproxyPinMismatch", "FixproxyHeartbeatTimeouts",
                  "FixproxyRateLimited", "FixproxyStateWriteFailing"):
        assert _active(prometheus, alert, traffic) == [], alert

    # The gateway drops the connection, outside maintenance: the session is down.
    logout = fleet.run(_gateway_drops, fleet.engines["traffic"])
    assert logout.msg_type == tags.MT_LOGOUT
    wait_firing("FixproxySessionDown", "traffic")

    # Down too, but inside its maintenance window: never even pending.
    maintenance = fleet.instance("maintenance")
    assert _series_for(prometheus, "fixproxy_session_up == 0", maintenance)
    assert _series_for(prometheus, "fixproxy_maintenance_active == 1", maintenance)
    assert _active(prometheus, "FixproxySessionDown", maintenance) == [], \
        "FixproxySessionDown must stay quiet during Kalshi's maintenance window"

    # The traffic engine logs on again: its reports left a cursor, so fixproxy asks the drop
    # copy for what it missed; the drop copy is unreachable and the recovery fails.
    assert _active(prometheus, "FixproxyRecoveryFailed", traffic) == []
    fleet.run(_log_on, fleet.pairs["traffic"], TRAFFIC_HEART_BT_INT)
    wait_firing("FixproxyRecoveryFailed", "traffic")
