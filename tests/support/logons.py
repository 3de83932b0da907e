"""Kalshi Logons built by hand, for the tests of the simulated gateway."""

from __future__ import annotations

from collections.abc import Callable

from fixproxy.fix.codec import utc_timestamp

Fields = list[tuple[int, bytes]]

API_KEY = "0b6a1c2e-5d4f-4e8a-9c3b-7f1e2d3c4b5a"


def logon_fields(signer: Callable[[bytes], bytes], *, key: str = API_KEY,
                 target: str = "KalshiNR", seq: int = 1, sending_time: bytes | None = None,
                 reset: bytes | None = b"Y", heartbeat: bytes = b"30") -> Fields:
    """A Logon signed the way Kalshi documents it (SendingTime now unless given)."""
    stamp = sending_time if sending_time is not None else utc_timestamp()
    signature = signer(b"\x01".join((stamp, b"A", b"%d" % seq, key.encode(), target.encode())))
    fields: Fields = [(35, b"A"), (49, key.encode()), (56, target.encode()), (34, b"%d" % seq),
                      (52, stamp), (98, b"0"), (108, heartbeat)]
    if reset is not None:
        fields.append((141, reset))
    fields += [(1137, b"9"), (95, b"%d" % len(signature)), (96, signature)]
    return fields


def replace(fields: Fields, tag: int, value: bytes) -> Fields:
    """``fields`` with the value of ``tag`` replaced."""
    return [(t, value if t == tag else v) for t, v in fields]


def without(fields: Fields, tag: int) -> Fields:
    """``fields`` without ``tag``."""
    return [(t, v) for t, v in fields if t != tag]
