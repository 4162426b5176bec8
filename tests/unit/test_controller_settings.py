"""Controller settings from EDGEFLEET_* variables: defaults, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.errors import SettingsError
from controller.settings import Settings


def test_defaults_are_embedded_and_local() -> None:
    settings = Settings.from_env({})
    assert settings.env == "development"
    assert settings.resolved_database_url == "sqlite:///edgefleet-data/controller.db"
    assert settings.broker_address == ("127.0.0.1", 1883)
    assert settings.release_key_path == Path("edgefleet-data/keys/release.key")
    assert settings.blob_base_url == "http://127.0.0.1:8080/api/v1/blobs"
    assert settings.max_upload_bytes == 512 << 20


def test_values_are_read_and_normalized() -> None:
    settings = Settings.from_env(
        {
            "EDGEFLEET_DATA_DIR": "/srv/ef",
            "EDGEFLEET_DATABASE_URL": "postgresql://u@db/edgefleet",
            "EDGEFLEET_BROKER_URL": "mqtt://broker:1884",
            "EDGEFLEET_PUBLIC_URL": "https://fleet.example.com/",
            "EDGEFLEET_TRUSTED_KEYS": "/k/a.pub, /k/b.pub",
            "EDGEFLEET_MAX_UPLOAD_BYTES": "1024",
            "EDGEFLEET_OFFLINE_AFTER_S": "30",
        }
    )
    assert settings.resolved_database_url == "postgresql+psycopg://u@db/edgefleet"
    assert settings.broker_address == ("broker", 1884)
    assert settings.blob_base_url == "https://fleet.example.com/api/v1/blobs"
    assert settings.trusted_keys == (Path("/k/a.pub"), Path("/k/b.pub"))
    assert settings.release_key_path == Path("/srv/ef/keys/release.key")
    assert (settings.max_upload_bytes, settings.offline_after_s) == (1024, 30.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EDGEFLEET_ENV", "staging"),
        ("EDGEFLEET_BROKER_URL", "http://broker"),
        ("EDGEFLEET_BROKER_URL", "mqtt://broker:notaport"),
        ("EDGEFLEET_PUBLIC_URL", "fleet.example.com"),
        ("EDGEFLEET_DATABASE_URL", "mysql://db/x"),
        ("EDGEFLEET_MAX_UPLOAD_BYTES", "lots"),
        ("EDGEFLEET_MAX_UPLOAD_BYTES", "0"),
        ("EDGEFLEET_INGEST_BATCH_SIZE", "-5"),
        ("EDGEFLEET_MQTT_CLIENT_ID", "a/b"),
    ],
)
def test_an_invalid_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_monitoring_settings_are_read_and_checked() -> None:
    settings = Settings.from_env(
        {"EDGEFLEET_DRIFT_ALPHA": "0.05", "EDGEFLEET_ALERT_WEBHOOKS": "http://a/x, https://b/y"}
    )
    assert settings.monitoring.drift_alpha == 0.05
    assert settings.monitoring.alert_webhooks == ("http://a/x", "https://b/y")
    for env, message in (
        ({"EDGEFLEET_DRIFT_ALPHA": "0.9"}, "EDGEFLEET_DRIFT_ALPHA='0.9' must be between"),
        ({"EDGEFLEET_ROLLUP_BATCH": "1.5"}, "EDGEFLEET_ROLLUP_BATCH='1.5' is not an integer"),
        ({"EDGEFLEET_ALERT_WEBHOOKS": "ftp://x"}, "'ftp://x' is not an http(s) URL"),
        ({"EDGEFLEET_DRIFT_WINDOW_S": "nan"}, "EDGEFLEET_DRIFT_WINDOW_S='nan' must be"),
        ({"EDGEFLEET_DRIFT_WINDOW_S": "7200"}, "must not exceed EDGEFLEET_TELEMETRY_RAW"),
    ):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env(env)
        assert message in str(caught.value)
