"""Kalshi's FIX endpoints as data: ports, TargetCompIDs, retransmission and reset policy.

Where Kalshi's pages disagree, the profile takes the choice valid under all of them: 141=Y is
forced on every endpoint without a documented right to keep sequence numbers (NR, DC, PT, RFQ,
MD); KalshiRT follows the engine. Sessions may override the policy.
"""

from __future__ import annotations

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
