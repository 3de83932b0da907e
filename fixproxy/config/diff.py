"""What a reload changes: the running configuration and a re-read one, compared.

Settings of the process as a whole that are set up once at start cannot follow a reload:
``[metrics]`` (the endpoint's socket and probes), ``[proxy] state_dir`` (live sessions save
their sequence numbers where they started; moving it would split one session's state across
two directories), the ``[proxy] journal_*`` keys (files opened at start) and ``[backoff]``
(a fresh backoff would forget the keys it is holding back, letting a reconnect loop hit
Kalshi's Logon rate limit). A change there is logged as a warning that a restart is
needed, and the running value is kept. Everything else applies: every ``[[session]]`` and
``[gateway]`` key, ``[maintenance]``, ``[proxy] shutdown_timeout`` and ``allow_peers``.
The rule is written as the list of what applies (:data:`LIVE_SETTINGS`), so a table added
later is treated as needing a restart until someone decides otherwise.

Plain values in, plain values out: :mod:`fixproxy.proxy.reload` runs these in a worker thread
while it builds the new sessions, and tests call them with two loaded files.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Final

from fixproxy.config.model import Config, ProxyConfig


@dataclass(frozen=True, slots=True)
class ConfigChanges:
    """How a reloaded configuration's sessions differ from the running one's, by name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    """Sessions present in both whose settings differ (``moved`` ones included)."""
    moved: tuple[str, ...] = ()
    """Sessions present in both whose ``listen`` address differs."""
    restart_needed: tuple[str, ...] = ()
    """One sentence per setting that was changed but keeps its running value."""

    def summary(self) -> str:
        """One line for the log and for ``fixproxy reload``."""
        parts = [f"{label}: {', '.join(names)}" for label, names in (
            ("added", self.added), ("removed", self.removed), ("changed", self.changed),
            ("new listen address", self.moved)) if names]
        if not parts:
            return "no session changed (keys and certificates re-read)"
        return "sessions " + "; ".join(parts)


LIVE_SETTINGS: Final = frozenset({"gateway", "sessions", "path", "maintenance", "warnings"})
"""Fields of :class:`Config` a reload applies. ``[gateway]`` reaches the program only through
the sessions the loader resolves from it; ``[maintenance]`` is read at every Logon; the
loader's warnings describe the file as loaded (and were logged by the loader). Any other
table (``[proxy]`` aside, see below), one added later included, is read once at start."""
LIVE_PROXY_SETTINGS: Final = frozenset({"shutdown_timeout", "allow_peers"})
"""``[proxy]`` keys a reload applies: the drain reads ``shutdown_timeout`` when it starts, and
``allow_peers`` reaches the program through the sessions, like ``[gateway]``."""
_RESTART_REASONS: Final = {
    "metrics": "the metrics endpoint is set up once, at start",
    "backoff": "a new backoff would forget the keys it is holding back, letting a "
               "reconnecting engine run into Kalshi's Logon rate limit",
    "state_dir": "live sessions keep their sequence state where they started, and one "
                 "session's state must not be split across two directories",
    "journal_dir": "the journal files are opened once, at start",
    "journal_max_bytes": "the journal files are opened once, at start",
    "journal_backups": "the journal files are opened once, at start",
}


def keep_restart_only_settings(current: Config, loaded: Config
                               ) -> tuple[Config, tuple[str, ...]]:
    """The loaded configuration with the settings that cannot change live put back.

    Returns:
        The configuration to serve, and one sentence per setting that was changed in the
        file but keeps its running value until the next restart.
    """
    notes: list[str] = []
    # Any: the values are the running configuration's own, field by field.
    kept: dict[str, Any] = {}
    for table in fields(Config):
        if table.name in LIVE_SETTINGS or table.name == "proxy":
            continue
        old, new = getattr(current, table.name), getattr(loaded, table.name)
        if old != new:
            notes.extend(_restart_notes(table.name, old, new, _RESTART_REASONS.get(
                table.name, "it is read once, at start")))
            kept[table.name] = old
    proxy_kept: dict[str, Any] = {}
    for key in fields(ProxyConfig):
        if key.name in LIVE_PROXY_SETTINGS:
            continue
        old, new = getattr(current.proxy, key.name), getattr(loaded.proxy, key.name)
        if old != new:
            notes.append(f"[proxy] {key.name} changed ({_show(old)} -> {_show(new)}) but "
                         f"takes effect when fixproxy restarts: "
                         f"{_RESTART_REASONS.get(key.name, 'it is read once, at start')}")
            proxy_kept[key.name] = old
    if proxy_kept:
        kept["proxy"] = replace(loaded.proxy, **proxy_kept)
    return replace(loaded, **kept), tuple(notes)


def _restart_notes(table: str, old: object, new: object, reason: str) -> list[str]:
    """One sentence per changed key of ``[table]`` (one for the table if not a dataclass)."""
    if not (is_dataclass(old) and is_dataclass(new)):
        return [f"[{table}] changed but takes effect when fixproxy restarts: {reason}"]
    return [f"[{table}] {key.name} changed ({_show(getattr(old, key.name))} -> "
            f"{_show(getattr(new, key.name))}) but takes effect when fixproxy restarts: "
            f"{reason}"
            for key in fields(old) if getattr(old, key.name) != getattr(new, key.name)]


def _show(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"  # a (host, port) address
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def compare_sessions(current: Config, new: Config,
                     restart_needed: tuple[str, ...] = ()) -> ConfigChanges:
    """Which sessions a reload from ``current`` to ``new`` adds, removes, changes or moves."""
    old = {session.name: session for session in current.sessions}
    fresh = {session.name: session for session in new.sessions}
    return ConfigChanges(
        added=tuple(name for name in fresh if name not in old),
        removed=tuple(name for name in old if name not in fresh),
        changed=tuple(name for name, session in fresh.items()
                      if name in old and old[name] != session),
        moved=tuple(name for name, session in fresh.items()
                    if name in old and old[name].listen != session.listen),
        restart_needed=restart_needed,
    )
