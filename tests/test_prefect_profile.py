"""The ``b2cal`` Prefect profile: written and activated by ``server up``, and the user's
profiles file put back as found by ``server down`` (b2cal.orchestrator.profile)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from b2cal.orchestrator.profile import ProfileBefore, point_at, profiles_path, restore

pytestmark = pytest.mark.unit

USER_FILE = """active = "work"

[profiles.work]
PREFECT_API_URL = "https://prefect.example.org/api"
PREFECT_LOGGING_LEVEL = "DEBUG"

[profiles.ephemeral]
PREFECT_SERVER_ALLOW_EPHEMERAL_MODE = true
"""


@pytest.fixture
def prefect_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    return tmp_path / "prefect"


def test_up_activates_b2cal_and_down_puts_the_users_profiles_back(prefect_home: Path) -> None:
    prefect_home.mkdir()
    profiles_path().write_text(USER_FILE)
    before = point_at("http://127.0.0.1:4321/api", "user:secret")
    doc = tomllib.loads(profiles_path().read_text())
    assert doc["active"] == "b2cal"
    assert doc["profiles"]["b2cal"] == {
        "PREFECT_API_URL": "http://127.0.0.1:4321/api",
        "PREFECT_API_AUTH_STRING": "user:secret",
    }
    # a second up (idempotent) finds b2cal active: the stack keeps the first finding
    assert point_at("http://127.0.0.1:4321/api", None).active == "b2cal"
    restore(ProfileBefore.model_validate(before.model_dump()))  # as kept in stack.json
    assert tomllib.loads(profiles_path().read_text()) == tomllib.loads(USER_FILE)


def test_no_profiles_file_before_none_after(prefect_home: Path) -> None:
    before = point_at("http://127.0.0.1:4321/api", None)
    assert tomllib.loads(profiles_path().read_text())["active"] == "b2cal"
    restore(before)
    assert not profiles_path().exists()


def test_an_older_b2cal_profile_and_a_profile_chosen_meanwhile_are_kept(
    prefect_home: Path,
) -> None:
    prefect_home.mkdir()
    profiles_path().write_text(
        '[profiles.b2cal]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
        '[profiles.work]\nPREFECT_API_URL = "https://prefect.example.org/api"\n'
    )
    before = point_at("http://127.0.0.1:4999/api", None)
    text = profiles_path().read_text().replace('active = "b2cal"', 'active = "work"')
    profiles_path().write_text(text)  # the user switched profile while the stack ran
    restore(before)
    doc = tomllib.loads(profiles_path().read_text())
    assert doc["active"] == "work"
    assert doc["profiles"]["b2cal"] == {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}


def test_unreadable_profiles_file_is_one_clear_error(prefect_home: Path) -> None:
    from b2cal.errors import B2CalError

    prefect_home.mkdir()
    profiles_path().write_text("active = [unclosed\n")
    with pytest.raises(B2CalError, match=r"profiles\.toml cannot be read"):
        point_at("http://127.0.0.1:4321/api", None)
    assert profiles_path().read_text() == "active = [unclosed\n"  # untouched
