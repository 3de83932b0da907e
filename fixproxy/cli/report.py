"""Reports the command line prints for an operator, made from values the commands fetched.

Each report is a pure function of its value, tested without a network or a terminal: fetching
is the job of :mod:`fixproxy.ops.control` and :mod:`fixproxy.net.tls`, printing the command's.
One section per report.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from fixproxy.net.pins import ChainReport

# --- fixproxy pin: a gateway's chain, and the pins to paste ------------------------------------


def format_chain_report(report: ChainReport) -> str:
    """Render a :class:`ChainReport` for a terminal, with a TOML ``pins`` block to paste."""
    lines = [f"{report.host}:{report.port} (server_name {report.server_name}, "
             f"{report.tls_version}) presented {len(report.presented)} certificate(s):", ""]
    for index, cert in enumerate(report.presented):
        role = "leaf" if index == 0 else "issuer"
        lines += [
            f"[{index}] {role}",
            f"    subject:   {cert.subject}",
            f"    issuer:    {cert.issuer}",
            f"    not after: {_utc_text(cert.not_after)}",
        ]
        if index == 0:
            lines.append(f"    sha256 fingerprint: {cert.sha256_fingerprint}")
        lines += [f'    pins = ["{cert.spki_pin}"]', ""]
    if report.verified:
        lines.append(f"The chain verifies against {report.trust_store} for "
                     f"{report.server_name}: verify = \"ca+pin\" can be used.")
        extra = report.verified_chain[len(report.presented):]
        for cert in extra:
            lines.append(f"    trust anchor (not sent by the server): {cert.subject}")
            lines.append(f'    pins = ["{cert.spki_pin}"]')
    else:
        lines.append(f"The chain does NOT verify against {report.trust_store} for "
                     f"{report.server_name}: {report.verify_error}")
        lines.append("Only verify = \"pin\" can work; check the certificate out of band "
                     "before trusting it.")
    lines += ["", "Paste into the session (or [gateway]) table:", "pins = ["]
    leaf = report.presented[0]
    lines.append(f'    "{leaf.spki_pin}",  # leaf {leaf.subject}, until '
                 f"{_utc_text(leaf.not_after)}")
    issuers = [*report.presented[1:], *report.verified_chain[len(report.presented):]]
    if issuers:
        lines.append("    # An issuer pin accepts any certificate that CA signs: use one only "
                     "with verify = \"ca+pin\".")
    seen = {leaf.spki_pin}
    for cert in issuers:
        if cert.spki_pin not in seen:
            seen.add(cert.spki_pin)
            lines.append(f'    # "{cert.spki_pin}",  # {cert.subject}')
    lines.append("]")
    return "\n".join(lines) + "\n"


def leaf_pem(report: ChainReport) -> bytes:
    """The presented leaf as PEM, the file ``pinned_cert`` expects (``--save FILE``)."""
    return report.presented[0].pem


def _utc_text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


# --- fixproxy status --------------------------------------------------------------------
# The /status answer as a table. Fields are read with .get: what an answer lacks shows as
# "?" or "-" rather than failing the command.

ERROR_WIDTH: Final = 60
"""Characters of a session's last error shown in the table; ``--json`` has all of it."""

_COLUMNS: Final = ("SESSION", "STATE", "SINCE", "ENDPOINT", "SEQ OUT/IN", "LAST OUT/IN",
                   "READY", "LAST ERROR")


def format_status(answer: Mapping[str, Any]) -> str:
    """The /status answer as a table for a terminal, with a header line and, after the table,
    why each session that is not ready is not."""
    now = _parse_time(answer.get("now"))
    maintenance = answer.get("maintenance") or {}
    if maintenance.get("active"):
        window = maintenance.get("window") or {}
        note = f"maintenance window in progress until {window.get('end', '?')}"
    elif maintenance.get("scheduled") and maintenance.get("window"):
        note = f"next maintenance window {maintenance['window'].get('start', '?')}"
    else:
        note = "no maintenance window configured"
    lines = [f"fixproxy {answer.get('version', '?')} at {answer.get('now', '?')}; {note}"
             + ("; shutting down" if answer.get("draining") else "")]
    rows: list[tuple[str, ...]] = [_COLUMNS]
    reasons: list[str] = []
    for session in answer.get("sessions", []):
        readiness = session.get("readiness")
        if readiness is None:
            ready = "-"
        else:
            ready = f"{'yes' if readiness.get('ready') else 'NO'} ({readiness.get('reason')})"
            if not readiness.get("ready"):
                reasons.append(f"{session.get('session')}: not ready "
                               f"({readiness.get('reason')}): {readiness.get('detail')}")
        seqs = session.get("sequence_numbers") or {}
        ages = session.get("last_message") or {}
        error = session.get("last_error")
        rows.append((
            str(session.get("session", "?")),
            str(session.get("state", "?")),
            _since(_parse_time(session.get("since")), now),
            str(session.get("endpoint", "?")),
            f"{seqs.get('engine_to_gateway', '-')}/{seqs.get('gateway_to_engine', '-')}",
            f"{_age(ages.get('engine_to_gateway'))}/{_age(ages.get('gateway_to_engine'))}",
            ready,
            "-" if not error else _truncate(str(error.get("text", "")), ERROR_WIDTH),
        ))
    if len(rows) == 1:
        lines.append("no sessions configured")
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
        lines.extend("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in rows)
    lines.extend(reasons)
    return "\n".join(lines)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _since(moment: datetime | None, now: datetime | None) -> str:
    if moment is None:
        return "-"
    text = moment.strftime("%H:%M:%SZ") if now is None or moment.date() == now.date() \
        else moment.strftime("%Y-%m-%d %H:%MZ")
    return text if now is None else f"{text} ({_duration((now - moment).total_seconds())})"


def _age(last: object) -> str:
    if not isinstance(last, dict) or not isinstance(last.get("age_seconds"), int | float):
        return "-"
    return _duration(float(last["age_seconds"]))


def _duration(seconds: float) -> str:
    """A short human age: 0.4s, 12s, 5m03s, 2h05m, 3d04h."""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _truncate(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line, whatever the error said
    return text if len(text) <= width else text[: width - 3] + "..."
