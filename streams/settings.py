"""Worker configuration, read from the environment (and an optional .env file).

Every setting has an environment variable; the names are the field names upper-cased
with the ``RERANK_`` prefix, except the Kafka ones, which use ``KAFKA_`` as Kafka
tooling does. An unusable value stops start-up with a message naming the variable.
"""
from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engines.config import EngineConfig

KAFKA_TOPIC_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _kafka(name: str) -> AliasChoices:
    return AliasChoices(f"KAFKA_{name.upper()}")


class WorkerSettings(BaseSettings):
    """All a worker needs to know; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="RERANK_", env_file=".env", extra="ignore", populate_by_name=True)

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
    replication_factor: int = Field(1, ge=1)
    # reply_to is honoured only for topics that start with this prefix.
    reply_to_prefix: str = "rerank-replies."

    # --- Engine ----------------------------------------------------------------------
    # OpenVINO: fast on CPU, and its scores do not depend on which requests share a batch, so a
    # redelivered request gets the same ranking. Precision "auto" is its static int8 on CPUs with
    # VNNI/AMX and fp32 on the others, where int8 is the slower (engines.config.resolve_precision).
    engine: Literal["onnx", "openvino", "torch", "bi-encoder"] = "openvino"
    model: str = "cross-encoder/ms-marco-MiniLM-L-6-v2"
    precision: Literal["auto", "fp32", "int8", "fp16", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prefilter_model: str | None = None
    prefilter_threshold: int = Field(100, ge=1)
    prefilter_keep: int = Field(100, ge=1)
    # The first stage when a request names none (engines.first_stage; README "Prefilter").
    prefilter_method: Literal["bi-encoder", "static", "bm25", "client", "static+bm25"] = "bm25"
    max_batch_tokens: int | None = Field(None, ge=64)
    max_batch_pairs: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1)
    # Only for a worker that owns its cores (a dedicated cpuset): replicas sharing a host would
    # otherwise be pinned to the same cores (engines.EngineConfig.cpu_pinning).
    cpu_pinning: bool = False
    # Names a request's "model" field may use besides the model id itself.
    model_aliases: list[str] = []

    # --- Windows and limits ----------------------------------------------------------
    window_max_pairs: int = Field(512, ge=1)
    # With the engine free, a window closes once no request has arrived for window_gather_ms
    # (requests fetched together are parsed one by one), and never later than window_ms after
    # its first request; see streams/windows.py.
    window_ms: float = Field(20.0, ge=0)
    window_gather_ms: float = Field(1.0, ge=0)
    # Bound on pairs taken from Kafka but not yet answered: backpressure beyond it.
    max_inflight_pairs: int = Field(4096, ge=1)
    max_documents: int = Field(2000, ge=1)
    stream_buffer_maxsize: int = Field(16, ge=1)
    # How long start-up waits for the cluster before giving up with a clear message.
    startup_timeout_s: float = Field(30.0, gt=0)
    # How soon the group notices a dead worker and hands its partitions to the others.
    session_timeout_s: float = Field(10.0, ge=6.0)
    heartbeat_interval_s: float = Field(2.0, gt=0)

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

    def engine_config(self) -> EngineConfig:
        """The engine part of the settings, as engines.EngineConfig."""
        return EngineConfig(
            engine=self.engine, model=self.model, precision=self.precision, device=self.device,
            prefilter_model=self.prefilter_model, prefilter_threshold=self.prefilter_threshold,
            prefilter_keep=self.prefilter_keep, prefilter_method=self.prefilter_method,
            max_batch_tokens=self.max_batch_tokens, max_batch_pairs=self.max_batch_pairs, threads=self.threads,
            cpu_pinning=self.cpu_pinning,
        )

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

    def faust_credentials(self):
        """The connection settings as faust/aiokafka credentials (None for PLAINTEXT)."""
        import faust

        context = None
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=str(self.ssl_ca_file) if self.ssl_ca_file else None)
        if self.security_protocol.startswith("SASL"):
            return faust.SASLCredentials(username=self.sasl_username, password=self.password(),
                                         mechanism=self.sasl_mechanism, ssl_context=context)
        if context is not None:
            return faust.SSLCredentials(context)
        return None


class SettingsError(SystemExit):
    """Start-up stops: a setting is unusable. The message names the variable."""


def load_settings(**overrides) -> WorkerSettings:
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            var = _env_name(loc) if loc else "settings"
            value = f" (got {err['input']!r})" if loc and "password" not in loc else ""
            lines.append(f"  {var}: {err['msg']}{value}")
        raise SettingsError("worker: unusable configuration:\n" + "\n".join(lines)) from None


def _env_name(field: str) -> str:
    info = WorkerSettings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    return f"RERANK_{field.upper()}"
