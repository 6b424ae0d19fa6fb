"""Worker configuration, read from the environment (and an optional .env file).

Every setting has an environment variable; the names are the field names upper-cased
with the ``RERANK_`` prefix, except the Kafka ones, which use ``KAFKA_`` as Kafka
tooling does. The engine's settings are ``engines.EngineConfig``'s fields, nested as
``engine_config`` and read from the same flat names (``RERANK_MODEL``, not
``RERANK_ENGINE_CONFIG__MODEL``). An unusable value stops start-up with a message naming
the variable.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from engines.config import EngineConfig

KAFKA_TOPIC_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _kafka(name: str) -> AliasChoices:
    return AliasChoices(f"KAFKA_{name.upper()}")


ENGINE_FIELDS = tuple(f.name for f in dataclasses.fields(EngineConfig))


class _EngineVariables(PydanticBaseSettingsSource):
    """``RERANK_<FIELD>`` of every ``EngineConfig`` field, from the variables (or the .env
    file) that ``source`` read, gathered under ``engine_config``."""

    def __init__(self, settings_cls: type[BaseSettings], source: EnvSettingsSource) -> None:
        super().__init__(settings_cls)
        self.source = source

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the variables itself

    def __call__(self) -> dict[str, Any]:
        prefix = self.source.env_prefix
        if not self.source.case_sensitive:
            prefix = prefix.lower()
        found = {name: self.source.env_vars[f"{prefix}{name}"] for name in ENGINE_FIELDS
                 if self.source.env_vars.get(f"{prefix}{name}") is not None}
        return {"engine_config": found} if found else {}


class WorkerSettings(BaseSettings):
    """All a worker needs to know; see the README's configuration table."""

    # dotenv_filtering: the .env file gives the fields it names, as the environment does, and
    # nothing else (by default it would add its other RERANK_ lines as top-level extras, which
    # _flat_engine_arguments would then take for arguments and put above the environment).
    model_config = SettingsConfigDict(env_prefix="RERANK_", env_file=".env", extra="ignore", populate_by_name=True,
                                      dotenv_filtering="only_existing")

    # --- Kafka -----------------------------------------------------------------------
    bootstrap_servers: str = Field("127.0.0.1:9092", validation_alias=_kafka("bootstrap_servers"))
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias=_kafka("security_protocol"))
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, validation_alias=_kafka("sasl_mechanism"))
    sasl_username: str | None = Field(None, validation_alias=_kafka("sasl_username"))
    # A secret: never logged (SecretStr prints as '**********').
    sasl_password: SecretStr | None = Field(None, validation_alias=_kafka("sasl_password"))
    sasl_password_file: Path | None = Field(None, validation_alias=_kafka("sasl_password_file"))
    ssl_ca_file: Path | None = Field(None, validation_alias=_kafka("ssl_ca_file"))

    group_id: str = "rerank-workers"
    request_topic: str = "rerank-requests"
    response_topic: str = "rerank-responses"
    dead_letter_topic: str = "rerank-dlq"
    request_partitions: int = Field(6, ge=1)
    response_partitions: int = Field(6, ge=1)
    # None ("auto", the default): min(3, brokers) and RF - 1 (at least 1), decided when a topic
    # is created (streams.topics.replication_for); a number sets it.
    replication_factor: int | None = Field(None, ge=1)
    min_insync_replicas: int | None = Field(None, ge=1)
    # reply_to is honoured only for topics that start with this prefix.
    reply_to_prefix: str = "rerank-replies."

    # --- Engine ----------------------------------------------------------------------
    # engines.EngineConfig is the one definition of the engine's settings and their defaults;
    # each of its fields is read from RERANK_<FIELD> (RERANK_ENGINE, RERANK_MODEL,
    # RERANK_CACHE_DIR, ...) by _EngineVariables below and checked by EngineConfig.validate.
    engine_config: EngineConfig = Field(default_factory=EngineConfig)
    # Names a request's "model" field may use besides the model id itself.
    model_aliases: list[str] = []

    # --- Limits ---------------------------------------------------------------------
    # Bound on pairs taken from Kafka but not yet answered: backpressure beyond it.
    max_inflight_pairs: int = Field(4096, ge=1)
    max_documents: int = Field(2000, ge=1)
    stream_buffer_maxsize: int = Field(16, ge=1)
    # How long start-up waits for the cluster before giving up with a clear message.
    startup_timeout_s: float = Field(30.0, gt=0)
    # How soon the group notices a dead worker and hands its partitions to the others.
    session_timeout_s: float = Field(10.0, ge=6.0)
    heartbeat_interval_s: float = Field(2.0, gt=0)
    # at_least_once: each answer is produced the moment it is ready, and a worker that dies may
    # leave duplicates. exactly_once: answers and offsets in one transaction per partition
    # (streams/transactions.py), for clients that read with isolation.level=read_committed.
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    # exactly_once: how long ready answers wait to share a transaction.
    transaction_interval_ms: float = Field(100.0, ge=0, le=10_000)

    # --- Operations ------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    worker_name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    summary_every_s: float = Field(5.0, gt=0)
    # SIGTERM to exit, at most (Kubernetes sends SIGKILL 30 s after SIGTERM by default).
    shutdown_grace_s: float = Field(20.0, ge=1.0)
    # A repeated aiokafka/faust log line (same message, other values) is let through once
    # per this many seconds, with a count of those held back; 0 lets every one through.
    log_repeat_s: float = Field(10.0, ge=0)
    data_dir: Path = Path(os.environ.get("TMPDIR", "/tmp")) / "rerank-worker"

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings, env_settings,
                                   dotenv_settings, file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: arguments, then the environment, then the .env file.
        return (init_settings, _EngineVariables(settings_cls, env_settings), env_settings,
                _EngineVariables(settings_cls, dotenv_settings), dotenv_settings, file_secret_settings)

    @model_validator(mode="before")
    @classmethod
    def _flat_engine_arguments(cls, data: Any) -> Any:
        """``WorkerSettings(model=..., threads=2)`` sets the engine's fields, as the variables
        do: arguments named after an EngineConfig field go into ``engine_config``."""
        if not isinstance(data, dict) or not any(name in data for name in ENGINE_FIELDS):
            return data
        data = dict(data)
        nested = data.get("engine_config") or {}
        if isinstance(nested, EngineConfig):
            nested = dataclasses.asdict(nested)
        data["engine_config"] = {**nested, **{name: data.pop(name) for name in ENGINE_FIELDS if name in data}}
        return data

    @field_validator("engine_config")
    @classmethod
    def _engine_in_range(cls, value: EngineConfig) -> EngineConfig:
        value.validate()  # its messages begin with the field's name: see _env_name
        return value

    @field_validator("replication_factor", "min_insync_replicas", mode="before")
    @classmethod
    def _auto_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("auto", "") else value

    @field_validator("request_topic", "response_topic", "dead_letter_topic", "reply_to_prefix")
    @classmethod
    def _legal_topic(cls, value: str) -> str:
        if not value or len(value) > 249 or set(value) - KAFKA_TOPIC_CHARS:
            raise ValueError(f"{value!r} is not a legal Kafka topic name (1-249 of [a-zA-Z0-9._-])")
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "WorkerSettings":
        if self.security_protocol.startswith("SASL"):
            if not self.sasl_mechanism or not self.sasl_username or self.password() is None:
                raise ValueError(
                    "KAFKA_SECURITY_PROTOCOL=%s needs KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and "
                    "KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE)" % self.security_protocol)
        if self.ssl_ca_file is not None and not self.ssl_ca_file.is_file():
            raise ValueError(f"KAFKA_SSL_CA_FILE={self.ssl_ca_file} is not a readable file")
        if self.sasl_password_file is not None and not self.sasl_password_file.is_file():
            raise ValueError(f"KAFKA_SASL_PASSWORD_FILE={self.sasl_password_file} is not a readable file")
        if (self.replication_factor is not None and self.min_insync_replicas is not None
                and self.min_insync_replicas > self.replication_factor):
            raise ValueError(f"RERANK_MIN_INSYNC_REPLICAS={self.min_insync_replicas} is more than "
                             f"RERANK_REPLICATION_FACTOR={self.replication_factor}: no acks=all write could succeed")
        if self.reply_to_prefix and self.request_topic.startswith(self.reply_to_prefix):
            raise ValueError("RERANK_REQUEST_TOPIC must not start with RERANK_REPLY_TO_PREFIX: "
                             "a request could then make the worker write to its own input")
        return self

    # --- Derived ---------------------------------------------------------------------
    def password(self) -> str | None:
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text().strip()
        return None

    def confluent_config(self) -> dict[str, str]:
        """The same connection settings for confluent-kafka (librdkafka) clients."""
        conf = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username or ""
            conf["sasl.password"] = self.password() or ""
        if self.ssl_ca_file:
            conf["ssl.ca.location"] = str(self.ssl_ca_file)
        return conf


class SettingsError(SystemExit):
    """Start-up stops: a setting is unusable. The message names the variable."""


def load_settings(**overrides) -> WorkerSettings:
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            var, message = _env_name(loc, err["msg"])
            value = f" (got {err['input']!r})" if loc and loc != ("engine_config",) and "password" not in loc[-1] else ""
            lines.append(f"  {var}: {message}{value}")
        raise SettingsError("worker: unusable configuration:\n" + "\n".join(lines)) from None


def env_name(field: str) -> str:
    """The environment variable of a setting, an engine's (EngineConfig) field included."""
    info = WorkerSettings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    return f"RERANK_{field.upper()}"


def setting_variables() -> set[str]:
    """Every environment variable the worker reads its settings from."""
    return {env_name(field) for field in [*WorkerSettings.model_fields, *ENGINE_FIELDS] if field != "engine_config"}


#: ``RERANK_`` variables of the project's own tools (Makefile, tests), not the worker's.
TOOL_VARIABLES = frozenset({"RERANK_TEST_SEED", "RERANK_VENV_CACHE", "RERANK_TOOLS_CACHE"})


def unread_variables(environ: dict[str, str] | None = None) -> list[str]:
    """The ``RERANK_`` variables set in ``environ`` (the process's) that no setting reads: a
    typo, or a setting removed (README, "Moved or removed in 0.3"), which would otherwise be
    ignored without a word."""
    environ = os.environ if environ is None else environ
    known = setting_variables() | TOOL_VARIABLES
    return sorted(name for name in environ if name.upper().startswith("RERANK_") and name.upper() not in known)


def _env_name(loc: tuple[str, ...], message: str) -> tuple[str, str]:
    """The variable an error is about, and its message. An error of EngineConfig.validate
    comes for ``engine_config`` as a whole, its message starting with the field's name."""
    if not loc:
        return "settings", message
    if loc[0] == "engine_config":
        if len(loc) > 1:
            return env_name(loc[1]), message
        text = message.removeprefix("Value error, ")
        field = text.split(" ", 1)[0]
        if field in ENGINE_FIELDS:
            return env_name(field), text
    return env_name(loc[0]), message
