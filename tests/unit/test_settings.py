"""Settings: each read once, a flag over its environment variable over its default, bad values refused."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from orchestra_server.edge.config import DEFAULT_JWKS_CACHE_SECONDS
from orchestra_server.identity.keys import DEFAULT_PUBLISH_LEAD
from orchestra_server.settings import DEFAULT_CALL_THREADS, Settings, SettingsError


def test_defaults_without_environment() -> None:
    settings = Settings.load({})
    assert settings == Settings()
    assert settings.signing_keys_path == Path("data") / "signing-keys.json"
    assert settings.uses_sqlite
    assert settings.database_url.startswith("sqlite:///")
    assert settings.database_url.endswith("orchestra.db")


def test_a_flag_wins_over_its_environment_variable_which_wins_over_the_default() -> None:
    env = {"ORCHESTRA_DATA_DIR": "/srv/env", "ORCHESTRA_ISSUER": "from-env", "ORCHESTRA_METRICS_PORT": "9100"}
    settings = Settings.load(env, data_dir=Path("/srv/flag"), issuer=None)
    assert settings.data_dir == Path("/srv/flag")
    assert settings.issuer == "from-env"
    assert settings.metrics_port == 9100
    assert settings.audience == Settings().audience
    assert settings.given(issuer="from-flag", audience=None).issuer == "from-flag"


def test_the_signing_key_file_and_the_edge_directory_come_from_the_environment(tmp_path: Path) -> None:
    keys = tmp_path / "elsewhere" / "k.json"
    settings = Settings.load(
        {"ORCHESTRA_SIGNING_KEYS_FILE": str(keys), "ORCHESTRA_EDGE_DIR": str(tmp_path)}, data_dir=tmp_path
    )
    assert settings.signing_keys_path == keys
    assert settings.edge_dir == tmp_path


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORCHESTRA_SQLITE_SYNCHRONOUS": "OFF"}, "ORCHESTRA_SQLITE_SYNCHRONOUS"),
        ({"ORCHESTRA_METRICS_PORT": "ninety"}, "ORCHESTRA_METRICS_PORT"),
        ({"ORCHESTRA_METRICS_PORT": "70000"}, "ORCHESTRA_METRICS_PORT"),
        ({"ORCHESTRA_LOG_FORMAT": "xml"}, "ORCHESTRA_LOG_FORMAT"),
        ({"ORCHESTRA_LOG_LEVEL": "loud"}, "ORCHESTRA_LOG_LEVEL"),
    ],
)
def test_unusable_values_are_refused_by_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(env)


def test_levels_are_read_case_insensitively() -> None:
    settings = Settings.load({"ORCHESTRA_SQLITE_SYNCHRONOUS": "full", "ORCHESTRA_LOG_LEVEL": "warning"})
    assert (settings.sqlite_synchronous, settings.log_level) == ("FULL", "WARNING")


def test_an_unknown_flag_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        Settings.load({}, data_directory=Path("x"))


def test_a_new_key_is_published_longer_than_the_edge_caches_the_key_set() -> None:
    # One lead everywhere: the settings take the key ring's, which outlasts the edge's cache.
    assert Settings().key_publish_lead == DEFAULT_PUBLISH_LEAD == timedelta(seconds=60)
    assert timedelta(seconds=DEFAULT_JWKS_CACHE_SECONDS) < DEFAULT_PUBLISH_LEAD


def test_the_grace_period_comes_from_the_environment_and_must_be_sensible_seconds() -> None:
    assert Settings().grace_period == 10.0
    assert Settings.load({"ORCHESTRA_GRACE_PERIOD": "2.5"}).grace_period == 2.5
    assert Settings.load({"ORCHESTRA_GRACE_PERIOD": "2.5"}, grace_period=0.0).grace_period == 0.0
    for bad in ("soon", "-1", "nan", "1e9"):
        with pytest.raises(SettingsError, match="ORCHESTRA_GRACE_PERIOD must be a number of seconds"):
            Settings.load({"ORCHESTRA_GRACE_PERIOD": bad})


def test_call_threads_come_from_the_environment_and_must_be_a_sensible_count() -> None:
    assert Settings().call_threads == DEFAULT_CALL_THREADS
    assert Settings.load({"ORCHESTRA_CALL_THREADS": "8"}).call_threads == 8
    assert Settings.load({"ORCHESTRA_CALL_THREADS": "8"}, call_threads=2).call_threads == 2
    for bad in ("many", "0", "-4", "65", "2.5"):
        with pytest.raises(SettingsError, match="ORCHESTRA_CALL_THREADS must be a whole number from 1 to 64"):
            Settings.load({"ORCHESTRA_CALL_THREADS": bad})
