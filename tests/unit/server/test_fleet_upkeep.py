"""The fleet's lifecycle settings (event retention, forgetting silent hosts) and when a
process's upkeep pass is due (pure: the clock is given)."""

from __future__ import annotations

import pytest

from lockd.errors import InputError
from lockd.server.settings import Settings
from lockd.server.upkeep import UPKEEP_EVERY_S, Upkeep

DB = {"LOCKD_DATABASE_URL": "sqlite:////tmp/x.db"}


def test_lifecycle_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {**DB, "LOCKD_FLEET_EVENT_RETENTION_S": "86400", "LOCKD_FLEET_FORGET_AFTER_S": "7200"}
    )
    assert (settings.fleet_event_retention_s, settings.forget_after_s) == (86_400, 7_200)
    defaults = Settings.from_env(DB)
    assert (defaults.fleet_event_retention_s, defaults.forget_after_s) == (30 * 86_400, 0)
    off = Settings.from_env({**DB, "LOCKD_FLEET_FORGET_AFTER_S": "0"})
    assert off.forget_after_s == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LOCKD_FLEET_EVENT_RETENTION_S": "0"},
            "LOCKD_FLEET_EVENT_RETENTION_S: Input should be greater than 0",
        ),
        (
            {"LOCKD_FLEET_EVENT_RETENTION_S": "30d"},
            "LOCKD_FLEET_EVENT_RETENTION_S='30d': give a number",
        ),
        (
            {"LOCKD_FLEET_FORGET_AFTER_S": "-1"},
            "LOCKD_FLEET_FORGET_AFTER_S: Input should be greater than or equal to 0",
        ),
        (
            {"LOCKD_FLEET_FORGET_AFTER_S": "1.5"},
            "LOCKD_FLEET_FORGET_AFTER_S: Input should be a valid integer, got a number with a "
            "fractional part",
        ),
    ],
)
def test_bad_lifecycle_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(InputError) as caught:
        Settings.from_env({**DB, **env})
    assert str(caught.value) == message


def test_a_pass_is_due_first_then_once_per_interval() -> None:
    upkeep = Upkeep(every_s=600)
    assert upkeep.due(1000.0)  # the first batch after start
    assert not upkeep.due(1000.0)
    assert not upkeep.due(1599.9)
    assert upkeep.due(1600.0)
    assert not upkeep.due(1700.0)
    assert Upkeep().every_s == UPKEEP_EVERY_S
