from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PILEGATE_") and key != "PILEGATE_TEST_PG_URL":
            monkeypatch.delenv(key)


def test_defaults_need_a_token_or_dev() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "api_token" in str(exc.value)
    assert "PILEGATE_DEV" in str(exc.value)
    s = load_settings({"dev": True})
    assert s.database_url == "sqlite+aiosqlite:///./pilegate.db"
    assert s.api_port == 8080 and s.ocpp_port == 9000 and s.cbp_port == 9010


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PILEGATE_API_TOKEN", "s3cret")
    monkeypatch.setenv("PILEGATE_API_PORT", "18080")
    monkeypatch.setenv("PILEGATE_HEARTBEAT_INTERVAL", "30")
    s = load_settings()
    assert s.api_port == 18080 and s.heartbeat_interval == 30
    assert s.api_token is not None and s.api_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


def test_toml_file_and_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "pilegate.toml"
    cfg.write_text('dev = true\napi_port = 8181\nlog_level = "debug"\n')
    s = load_settings(config_file=cfg)
    assert (s.dev, s.api_port, s.log_level) == (True, 8181, "debug")
    monkeypatch.setenv("PILEGATE_API_PORT", "8282")
    assert load_settings(config_file=cfg).api_port == 8282  # env beats file
    assert load_settings({"api_port": 8383}, config_file=cfg).api_port == 8383  # flag beats env


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"api_port": "70000"}, "api_port (PILEGATE_API_PORT)"),
        ({"database_url": "mysql://x/y"}, "database_url (PILEGATE_DATABASE_URL)"),
        ({"log_level": "loud"}, "log_level (PILEGATE_LOG_LEVEL)"),
        ({"heartbeat_interval": "1"}, "heartbeat_interval"),
        ({"ocpp_path_prefix": "ocpp/"}, "ocpp_path_prefix"),
    ],
)
def test_invalid_values_name_the_setting(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"dev": True, **overrides})
    assert named in str(exc.value)


def test_unknown_key_in_toml_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("dev = true\napi_prot = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(config_file=cfg)
    assert "api_prot" in str(exc.value)


def test_broken_or_missing_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("dev = = true\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_file=cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "missing.toml")


def test_serve_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.config import Settings

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in Settings.model_fields:
        assert f"PILEGATE_{name.upper()}" in out
        assert "--" + name.replace("_", "-") in out
    assert "[default: sqlite+aiosqlite:///./pilegate.db]" in out


def test_serve_refuses_invalid_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--api-port", "nope"]) == 2
    err = capsys.readouterr().err
    assert "api_port (PILEGATE_API_PORT)" in err
