"""Text an operator reads in a terminal, built from values the commands fetched.

Kept apart from the commands (cli/main.py) so that each report is a pure function of its value
and is tested without a network or a terminal.
"""

from __future__ import annotations

from datetime import datetime

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
