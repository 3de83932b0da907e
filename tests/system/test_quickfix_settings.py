"""The QuickFIX settings fixproxy ships (conf/quickfix) agree with the example configuration,
and they are what the interop tests run: a test only sets its own connection, CompIDs, paths
and timers. QuickFIX itself is not needed here; the interop tests run the files through it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.config_files import EXAMPLE
from support.quickfix_engine import (
    BEGIN_STRING,
    DEFAULT_APPL_VER_ID,
    KEEPING_SETTINGS,
    RESETTING_SETTINGS,
    SHIPPED_SETTINGS,
    TEST_OWN_KEYS,
    EngineSettings,
    read_settings,
    render_settings,
)

from fixproxy.config.loader import load_config


def test_one_settings_file_per_kind_of_endpoint() -> None:
    assert sorted(path.name for path in SHIPPED_SETTINGS.glob("*.cfg")) == [
        "order-entry-rt.cfg", "order-entry.cfg"]
    resetting = read_settings(RESETTING_SETTINGS)["DEFAULT"]
    keeping = read_settings(KEEPING_SETTINGS)["DEFAULT"]
    assert resetting["ResetOnLogon"] == "Y"
    assert keeping["ResetOnLogon"] == "N"
    for default in (resetting, keeping):
        assert default["ConnectionType"] == "initiator"
        assert default["BeginString"] == BEGIN_STRING
        assert default["DefaultApplVerID"] == DEFAULT_APPL_VER_ID
        assert default["UseDataDictionary"] == "Y"
        # Kalshi's own tags are accepted; nothing else of the validation is turned off.
        assert default["ValidateUserDefinedFields"] == "N"
        assert default["AllowUnknownMsgFields"] == "Y"
        assert "ValidateIncomingMessage" not in default
        assert default["TransportDataDictionary"].endswith("/FIXT11.xml")
        assert default["AppDataDictionary"].endswith("/FIX50SP2.xml")


@pytest.mark.parametrize("path", [RESETTING_SETTINGS, KEEPING_SETTINGS], ids=lambda p: p.stem)
def test_each_file_points_at_its_session_of_the_example(path: Path) -> None:
    sessions = {s.name: s for s in load_config(EXAMPLE, check_files=False).sessions}
    session = sessions[path.stem]
    settings = read_settings(path)
    assert settings["DEFAULT"]["SocketConnectHost"] == session.listen[0]
    assert int(settings["DEFAULT"]["SocketConnectPort"]) == session.listen[1]
    assert settings["SESSION"]["SenderCompID"] == session.api_key
    assert settings["SESSION"]["TargetCompID"] == session.endpoint.target_comp_id
    # The engine resets itself exactly where fixproxy would force the reset.
    assert (settings["DEFAULT"]["ResetOnLogon"] == "Y") == (
        session.endpoint.reset_policy == "always")


@pytest.mark.parametrize("reset_on_logon", [True, False])
def test_the_interop_tests_run_the_shipped_settings(tmp_path: Path,
                                                    reset_on_logon: bool) -> None:
    settings = EngineSettings(sender_comp_id="11111111-2222-3333-4444-555555555555",
                              target_comp_id="KalshiNR", port=4242, workdir=tmp_path,
                              reset_on_logon=reset_on_logon)
    rendered = tmp_path / "rendered.cfg"
    rendered.write_text(render_settings(settings), encoding="ascii")
    used = read_settings(rendered)
    shipped = read_settings(RESETTING_SETTINGS if reset_on_logon else KEEPING_SETTINGS)
    for section in ("DEFAULT", "SESSION"):
        assert set(used[section]) == set(shipped[section])
        for key, value in shipped[section].items():
            if key not in TEST_OWN_KEYS:
                assert used[section][key] == value, key
    assert used["DEFAULT"]["SocketConnectPort"] == "4242"
    assert used["SESSION"]["TargetCompID"] == "KalshiNR"
