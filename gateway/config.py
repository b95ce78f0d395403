"""Gateway configuration: one pydantic-settings model.

Sources, highest priority first: command-line flags of ``pilegate serve``,
``PILEGATE_*`` environment variables, an optional TOML file
(``PILEGATE_CONFIG_FILE`` or ``--config``), then the defaults below. Every
field carries a description so ``pilegate serve --help`` can list them all.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "PILEGATE_"


class ConfigError(Exception):
    """Invalid configuration; the message names every offending setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
    )

    # --- process -----------------------------------------------------------
    node_id: str = Field(
        "node-1",
        min_length=1,
        max_length=64,
        description="Name of this gateway process (several nodes share one database).",
    )
    dev: bool = Field(
        False,
        description="Development mode: the ops API may run without a token. Never in production.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest log level written."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto",
        description="auto = readable on a terminal, JSON lines otherwise.",
    )
    event_loop: Literal["asyncio", "uvloop", "auto"] = Field(
        "asyncio",
        description="Event loop of `pilegate serve`: asyncio, uvloop (pip install "
        "'pilegate[uvloop]': no more mixed msgs/s than asyncio on SQLite since the "
        "gateway frames WebSocket messages itself, at a higher p99, see "
        "docs/benchmarks.md), or auto = uvloop when installed.",
    )
    gc_threshold: int = Field(
        50_000,
        ge=0,
        description="Allocations between two young-generation garbage collections in "
        "`pilegate serve` (Python's default is 700); with it, startup objects are frozen "
        "out of collection and older generations collected 20 and 100 times less often. "
        "Fewer collections: a 10,000-charger reconnect storm booted in 3.6-4.1 s instead "
        "of 6.2 s and the slowest answer under mixed load took 20-38 ms instead of "
        "116-154 ms (docs/benchmarks.md). 0 keeps Python's defaults.",
    )
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, le=300, description="How long shutdown waits for in-flight work."
    )

    # --- storage -----------------------------------------------------------
    database_url: str = Field(
        "sqlite+aiosqlite:///./pilegate.db",
        description="SQLAlchemy URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB.",
    )
    database_migrate_on_start: bool = Field(
        True, description="Apply Alembic migrations at startup."
    )
    database_echo: bool = Field(False, description="Log every SQL statement (debugging only).")
    sqlite_cache_mib: int = Field(
        64,
        ge=1,
        le=65536,
        description="SQLite page cache in MiB (PRAGMA cache_size); the meter tables' "
        "indexes outgrow SQLite's default 2 MiB (docs/benchmarks.md). Not used with "
        "PostgreSQL.",
    )

    # --- ops HTTP API --------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the ops HTTP API listens on.")
    api_port: int = Field(8080, ge=0, le=65535, description="Port of the ops HTTP API.")
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token required on /api (required unless dev is true).",
    )

    # --- OCPP-J --------------------------------------------------------------
    ocpp_host: str = Field("0.0.0.0", description="Address the OCPP-J WebSocket listener binds.")
    ocpp_port: int = Field(9000, ge=0, le=65535, description="Port of the OCPP-J listener.")
    ocpp_path_prefix: str = Field(
        "/ocpp", description="URL path prefix; chargers connect to PREFIX/{pileId}."
    )
    heartbeat_interval: int = Field(
        60, ge=5, le=86400, description="Heartbeat interval (s) given to chargers at boot."
    )
    ocpp_require_subprotocol: bool = Field(
        True,
        description="Refuse handshakes that offer no OCPP subprotocol pilegate speaks.",
    )
    registration_policy: Literal["open", "known"] = Field(
        "open",
        description="open: valid unknown pile IDs are registered at first connect; "
        "known: only piles in the database may connect (others get 404).",
    )
    basic_auth_required: bool = Field(
        False,
        description="OCPP security profile 1: require HTTP Basic auth with the pile's password.",
    )
    ocpp_max_message_size: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="Largest OCPP message accepted (bytes)."
    )
    ocpp_max_bad_messages: int = Field(
        10,
        ge=1,
        le=10000,
        description="Consecutive malformed or invalid messages after which a pile is disconnected.",
    )
    lenient_models: list[str] = Field(
        default_factory=list,
        description="Charger models whose schema violations are logged as warnings and "
        "processed anyway (firmware known to send out-of-spec fields).",
    )
    kind_policy: Literal["flag", "reject"] = Field(
        "flag",
        description="When a charger's report contradicts the AC/DC kind of its pile ID: "
        "flag it, or reject its boot.",
    )
    model_kinds: dict[str, Literal["AC", "DC"]] = Field(
        default_factory=dict,
        description='Known charger models and their kind, e.g. {"XD32E": "AC"}.',
    )
    kind_config_keys: dict[str, dict[str, Literal["AC", "DC"]]] = Field(
        default_factory=dict,
        description="Configuration keys read with GetConfiguration after boot whose values "
        'reveal the kind, e.g. {"ConnectorType": {"GBT-DC": "DC", "GBT-AC": "AC"}}.',
    )
    boot_rate_limit: float = Field(
        200.0,
        gt=0,
        description="BootNotifications per second accepted before replying Pending "
        "(reconnect storms).",
    )
    boot_retry_min: int = Field(10, ge=1, description="Shortest retry interval (s) in Pending.")
    boot_retry_max: int = Field(60, ge=1, description="Longest retry interval (s) in Pending.")
    ping_interval: float = Field(
        10.0, ge=0, description="WebSocket ping after this many idle seconds (0 = never)."
    )
    pong_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a pong.")
    heartbeat_multiple: float = Field(
        3.0,
        gt=1,
        description="Offline when nothing arrived for this many heartbeat intervals.",
    )
    watchdog_min_silence: float = Field(
        15.0,
        ge=0,
        description="Floor (s) of the heartbeat watchdog window, for chargers that "
        "heartbeat faster than asked.",
    )
    clock_skew_tolerance: float = Field(
        30.0,
        ge=0,
        description="A transaction whose start is older than the connection by more than "
        "this (s) is recorded as started offline.",
    )
    command_timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds to wait for a charger's answer to a command."
    )
    command_queue_size: int = Field(
        16, ge=1, le=1000, description="Commands that may wait per pile behind the one in flight."
    )
    data_transfer_vendors: list[str] = Field(
        default_factory=list,
        description="vendorIds accepted in DataTransfer; others get UnknownVendorId "
        "(the message is stored either way).",
    )

    # --- firmware ------------------------------------------------------------
    firmware_dir: str = Field(
        "./firmware-images", description="Directory where uploaded firmware images are kept."
    )
    firmware_base_url: str | None = Field(
        None,
        description="Base URL chargers download images from (e.g. http://gw.example:8080); "
        "default: the ops API's own address.",
    )

    # --- MQTT and several nodes -------------------------------------------------
    mqtt_url: str | None = Field(
        None,
        description="MQTT broker, e.g. mqtt://127.0.0.1:1883 (events and cross-node commands); "
        "unset = no MQTT.",
    )
    mqtt_topic_prefix: str = Field("pilegate/v1", description="Prefix of every MQTT topic.")
    mqtt_publish_batch: int = Field(
        500, ge=1, le=10000, description="Outbox rows published per round."
    )
    node_lease_seconds: float = Field(
        15.0,
        gt=0,
        description="A node whose heartbeat is older than this is dead: its piles are "
        "marked offline by the others.",
    )

    # --- cloud-board (CBP/1) -------------------------------------------------
    cbp_host: str = Field("0.0.0.0", description="Address the cloud-board TCP listener binds.")
    cbp_port: int = Field(9010, ge=0, le=65535, description="Port of the cloud-board listener.")
    cbp_heartbeat_interval: int = Field(
        10,
        ge=1,
        le=255,
        description="Heartbeat interval (s) in the CBP/1 login reply. CBP/1 has no pings: "
        "a dead link is offline after heartbeat_multiple x this, so keep it <= 10 for 30 s.",
    )
    cbp_login_timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds a CBP/1 charger has to log in after connecting."
    )

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// "
                f"(got {value.split('://', 1)[0]!r})"
            )
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"must look like mqtt://HOST[:PORT] (got {value!r})")
        return value

    @field_validator("ocpp_path_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value.startswith("/") or (value.endswith("/") and value != "/"):
            raise ValueError("must start with '/' and not end with '/' (e.g. /ocpp)")
        return value

    @model_validator(mode="after")
    def _retry_range(self) -> Settings:
        if self.boot_retry_max < self.boot_retry_min:
            raise ValueError("boot_retry_max must be >= boot_retry_min")
        return self

    @model_validator(mode="after")
    def _token_unless_dev(self) -> Settings:
        if not self.dev and (self.api_token is None or not self.api_token.get_secret_value()):
            raise ValueError(
                "api_token is required (set PILEGATE_API_TOKEN), "
                "or run in development mode with PILEGATE_DEV=true / --dev"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _CONFIG_FILE.get("path")
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


# The TOML path is chosen per load() call; pydantic-settings asks for sources
# through a classmethod, so the choice is handed over through this holder.
_CONFIG_FILE: dict[str, Path | None] = {"path": None}


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "settings"
        name = f"{loc} ({ENV_PREFIX}{loc.upper()})" if err["loc"] else loc
        lines.append(f"  - {name}: {err['msg']}")
    return "\n".join(lines)


def load_settings(
    overrides: dict[str, Any] | None = None, config_file: str | Path | None = None
) -> Settings:
    """Build the settings from flags (``overrides``), environment and TOML.

    Raises ConfigError with a message naming each invalid setting.
    """
    import os

    path: Path | None = None
    chosen = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise ConfigError(f"invalid configuration: config file {path} does not exist")
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid configuration: {path} is not valid TOML: {exc}") from exc
    _CONFIG_FILE["path"] = path
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        origin = f"flags, environment and {path}" if path else "flags and environment"
        raise ConfigError(_format_validation_error(exc, origin)) from exc
    finally:
        _CONFIG_FILE["path"] = None


def describe_settings() -> list[tuple[str, str, str, str]]:
    """(field, environment variable, default, description) for every setting."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list | dict):
            default = json.dumps(default)
        shown = (
            "(none)"
            if default is None
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        rows.append((name, f"{ENV_PREFIX}{name.upper()}", shown, field.description or ""))
    return rows
