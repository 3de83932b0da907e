"""What a reload changes: two loaded configuration files compared, sessions by name."""

from __future__ import annotations

from pathlib import Path

from support.e2e import E2EMaterial
from support.reload_harness import Session, config_text

from fixproxy.config.diff import compare_sessions, keep_restart_only_settings
from fixproxy.config.loader import load_config


def test_session_changes_are_named(e2e_material: E2EMaterial, tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = tmp_path / "f.toml"
    path.write_text(config_text(e2e_material, 8228, state,
                                [Session("a", 19001), Session("b", 19002)]))
    old = load_config(path)
    path.write_text(config_text(e2e_material, 8228, state,
                                [Session("a", 19003), Session("c", 19004)]))
    new = load_config(path)
    served, notes = keep_restart_only_settings(old, new)
    assert notes == ()
    assert served == new
    changes = compare_sessions(old, served)
    assert (changes.added, changes.removed, changes.changed, changes.moved) == (
        ("c",), ("b",), ("a",), ("a",))
    assert changes.summary() == ("sessions added: c; removed: b; changed: a; "
                                 "new listen address: a")
    assert compare_sessions(old, old).summary().startswith("no session changed")
