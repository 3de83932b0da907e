"""Kalshi's FIX facts as data: endpoints (ports, TargetCompIDs, retransmission and reset
policy), environments, Logon limits, and the Logon flags that carry a session's options.

Where Kalshi's pages disagree, the profile takes the choice valid under all of them: 141=Y is
forced on every endpoint without a documented right to keep sequence numbers (NR, DC, PT, RFQ,
MD); KalshiRT follows the engine. Sessions may override the policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

ResetPolicy = Literal["always", "engine"]
"""``always``: 141=Y on every Logon; ``engine``: forward what the engine asked for."""


@dataclass(frozen=True, slots=True)
class EndpointProfile:
    """One Kalshi FIX session type."""

    target_comp_id: str
    port: int
    purpose: str
    retransmission: bool
    reset_policy: ResetPolicy
    market_data_host: bool = False


ENDPOINTS: Final[dict[str, EndpointProfile]] = {
    profile.target_comp_id: profile
    for profile in (
        EndpointProfile("KalshiNR", 8228, "order entry, no retransmission", False, "always"),
        EndpointProfile("KalshiDC", 8229, "drop copy", False, "always"),
        EndpointProfile("KalshiRT", 8230, "order entry with retransmission", True, "engine"),
        EndpointProfile("KalshiPT", 8231, "post trade", True, "always"),
        EndpointProfile("KalshiRFQ", 8232, "RFQ quoting", False, "always"),
        EndpointProfile("KalshiMD", 8233, "market data", False, "always", market_data_host=True),
    )
}


@dataclass(frozen=True, slots=True)
class Environment:
    """Hosts of one Kalshi environment."""

    order_entry_host: str
    market_data_host: str


ENVIRONMENTS: Final[dict[str, Environment]] = {
    # The customer's connectivity page names fix.elections.kalshi.com; Kalshi's newer pages name
    # mm.fix.elections.kalshi.com. `host` in the config selects the newer one.
    "prod": Environment("fix.elections.kalshi.com", "marketdata.fix.elections.kalshi.com"),
    "demo": Environment("fix.demo.kalshi.co", "marketdata.fix.demo.kalshi.co"),
}

LOGON_HEARTBEAT_DEFAULT: Final = 30
"""HeartBtInt (108) inserted when the engine's Logon has none (Kalshi's documented default)."""
LOGON_HEARTBEAT_MIN: Final = 4
"""Kalshi's event-contract gateway requires HeartBtInt > 3."""
LOGON_HEARTBEAT_MAX: Final = 3600
MAX_MESSAGE_RETENTION_HOURS: Final = 72
LISTENER_ENDPOINTS: Final = frozenset({"KalshiNR", "KalshiRT"})
"""A listener is a mode of these two sessions only (Kalshi, "Listener sessions")."""

# MsgTypes Kalshi documents, used as the closed label set of message metrics.
KNOWN_MSG_TYPES: Final = frozenset({
    "A", "0", "1", "2", "3", "4", "5", "j",
    "D", "F", "G", "q", "8", "9", "r", "UOG", "UOH", "UMS",
    "U1", "U2", "U3", "V", "W", "X", "Y", "e", "f",
    "R", "b", "S", "AI", "Z", "U9", "AG", "UA", "UC", "U7", "U8", "UE", "UB",
})


def default_host(environment: str, profile: EndpointProfile) -> str:
    """The gateway host for ``profile`` in ``environment``."""
    env = ENVIRONMENTS[environment]
    return env.market_data_host if profile.market_data_host else env.order_entry_host


FlagEncoding = Literal["yes_no", "yes_when_true", "integer"]
"""``yes_no``: Y or N, sent whenever the option is set; ``yes_when_true``: Y when the option is
true, nothing when it is false; ``integer``: the number in decimal."""


@dataclass(frozen=True, slots=True)
class LogonFlag:
    """One session option Kalshi reads from the Logon (35=A), and the tags that carry it."""

    option: str
    """The session option that sets it: the ``[[session]]`` key and the SessionConfig field."""
    tags: tuple[int, ...]
    """The tags it sets, all to the same value, in wire order."""
    encoding: FlagEncoding


# Tag numbers as Kalshi's Logon table gives them (fixproxy.fix.tags names them too; this module
# sits below fix/ and imports nothing from fixproxy).
LOGON_FLAGS: Final[tuple[LogonFlag, ...]] = (
    LogonFlag("cancel_orders_on_disconnect", (8013,), "yes_no"),  # CancelOrdersOnDisconnect
    # A listener session: ListenerSession (20126) with SkipPendingExecReports (21011).
    LogonFlag("listener", (20126, 21011), "yes_when_true"),
    LogonFlag("use_dollars", (21005,), "yes_no"),  # UseDollars
    LogonFlag("receive_settlement_reports", (20127,), "yes_no"),  # ReceiveSettlementReports
    LogonFlag("message_retention_hours", (20200,), "integer"),  # MessageRetentionPeriod
)
"""Every Kalshi Logon flag, in the order fixproxy writes them."""


def logon_flags(options: Mapping[str, bool | int | None]) -> tuple[tuple[int, bytes], ...]:
    """The Logon fields that carry a session's options, in wire order.

    Args:
        options: the value of every :data:`LOGON_FLAGS` option; None means "not set", and sends
            nothing.
    Raises:
        KeyError: an option of :data:`LOGON_FLAGS` is missing (a caller's mistake: a flag that
            guards money must never be dropped by omission).
    """
    fields: list[tuple[int, bytes]] = []
    for flag in LOGON_FLAGS:
        value = options[flag.option]
        if value is None or (flag.encoding == "yes_when_true" and not value):
            continue
        encoded = _encode(flag.encoding, value)
        fields.extend((tag, encoded) for tag in flag.tags)
    return tuple(fields)


def _encode(encoding: FlagEncoding, value: bool | int) -> bytes:
    if encoding == "integer":
        return b"%d" % value
    return b"Y" if value else b"N"
