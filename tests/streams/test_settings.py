"""Worker settings: unusable values stop start-up naming the variable; secrets stay secret."""
from __future__ import annotations

import subprocess
import sys

import pytest

from streams.app import faust_credentials
from streams.settings import SettingsError, load_settings, unread_variables


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in list(__import__("os").environ):
        if var.startswith(("RERANK_", "KAFKA_")):
            monkeypatch.delenv(var)


@pytest.mark.parametrize("var,value", [
    ("RERANK_MAX_INFLIGHT_PAIRS", "0"),
    ("RERANK_ENGINE", "tensorflow"),
    ("RERANK_REQUEST_TOPIC", "bad topic!"),
    ("KAFKA_BOOTSTRAP_SERVERS", "no-port-here"),
    ("KAFKA_SECURITY_PROTOCOL", "SASL_TLS"),
    ("RERANK_SESSION_TIMEOUT_S", "soon"),
    ("RERANK_SCHEDULER_POLICY", "random"),
    ("RERANK_SHUTDOWN_GRACE_S", "0.5"),
    ("RERANK_LOG_REPEAT_S", "-3"),
    ("RERANK_PREFILTER_METHOD", "tfidf"),
    # checked by engines.EngineConfig.validate, not by a pydantic type
    ("RERANK_PREFILTER_KEEP", "0"),
    ("RERANK_MAX_BATCH_TOKENS", "0"),
    ("RERANK_THREADS", "0"),
    ("RERANK_PREFILTER_RUNTIME", "tensorrt"),
])
def test_an_unusable_setting_names_its_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert var in str(exc.value)


def test_prefilter_method_reaches_the_engine_and_names_what_engines_and_contract_know(monkeypatch):
    from typing import get_args, get_type_hints

    from engines import EngineConfig
    from schemas.request import PrefilterMethod
    from vocabulary import PREFILTER_METHODS

    assert load_settings().engine_config.prefilter_method == "bm25"  # the default
    monkeypatch.setenv("RERANK_PREFILTER_METHOD", "static")
    assert load_settings().engine_config.prefilter_method == "static"
    allowed = get_args(get_type_hints(EngineConfig)["prefilter_method"])
    assert allowed == get_args(PrefilterMethod) == PREFILTER_METHODS


def test_every_engine_option_is_a_worker_setting_with_the_engines_defaults(monkeypatch, tmp_path):
    """One definition: the worker's engine settings are EngineConfig's fields and defaults,
    each read from RERANK_<FIELD>."""
    import dataclasses

    from engines import EngineConfig

    assert load_settings().engine_config == EngineConfig()
    values = {"RERANK_ENGINE": "onnx", "RERANK_MODEL": "/models/mine", "RERANK_PRECISION": "fp32",
              "RERANK_DEVICE": "cpu", "RERANK_PREFILTER_MODEL": "/models/bi", "RERANK_PREFILTER_THRESHOLD": "50",
              "RERANK_PREFILTER_KEEP": "20", "RERANK_MAX_BATCH_TOKENS": "4096", "RERANK_MAX_BATCH_PAIRS": "32",
              "RERANK_MAX_BACKLOG_BATCH_TOKENS": "8192",
              "RERANK_MAX_LENGTH": "256", "RERANK_THREADS": "3", "RERANK_CACHE_DIR": str(tmp_path),
              "RERANK_EMBEDDING_CACHE_SIZE": "10", "RERANK_PREFILTER_RUNTIME": "onnx", "RERANK_CPU_PINNING": "true",
              "RERANK_PREFILTER_METHOD": "static+bm25", "RERANK_SCHEDULER_POLICY": "fifo",
              "RERANK_MAX_CHUNKS_PER_DOC": "4", "RERANK_CHUNK_OVERLAP_TOKENS": "16",
              "RERANK_TRUNCATION_DIRECTION": "left", "RERANK_MAX_PAIRS_PER_REQUEST": "5000"}
    assert {f"RERANK_{f.name.upper()}" for f in dataclasses.fields(EngineConfig)} == set(values)
    for var, value in values.items():
        monkeypatch.setenv(var, value)
    config = load_settings().engine_config
    assert config == EngineConfig(engine="onnx", model="/models/mine", precision="fp32", device="cpu",
                                  prefilter_model="/models/bi", prefilter_threshold=50, prefilter_keep=20,
                                  max_batch_tokens=4096, max_batch_pairs=32, max_backlog_batch_tokens=8192,
                                  max_length=256, threads=3,
                                  cache_dir=str(tmp_path), embedding_cache_size=10, prefilter_runtime="onnx",
                                  cpu_pinning=True, prefilter_method="static+bm25", scheduler_policy="fifo",
                                  max_chunks_per_doc=4, chunk_overlap_tokens=16, truncation_direction="left",
                                  max_pairs_per_request=5000)


def test_engine_settings_come_from_a_dotenv_file_below_the_environment(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("RERANK_MODEL=/from/dotenv\nRERANK_THREADS=2\nRERANK_MAX_DOCUMENTS=7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RERANK_THREADS", "5")
    settings = load_settings()
    assert settings.engine_config.model == "/from/dotenv" and settings.engine_config.threads == 5
    assert settings.max_documents == 7


def test_sasl_without_credentials_is_refused(monkeypatch):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert "KAFKA_SASL_USERNAME" in str(exc.value)


def test_request_topic_inside_the_reply_prefix_is_refused(monkeypatch):
    monkeypatch.setenv("RERANK_REQUEST_TOPIC", "rerank-replies.requests")
    with pytest.raises(SettingsError, match="RERANK_REPLY_TO_PREFIX"):
        load_settings()


def test_security_settings_reach_both_clients_and_the_password_never_prints(monkeypatch, tmp_path):
    secret = "s3cr3t-Password"
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "rerank")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", secret)
    settings = load_settings()
    conf = settings.confluent_config()
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512" and conf["sasl.password"] == secret
    creds = faust_credentials(settings)
    assert creds.username == "rerank" and creds.password == secret
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
    assert secret not in repr(creds)


def test_password_from_a_file(monkeypatch, tmp_path):
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "u")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(f))
    assert load_settings().confluent_config()["sasl.password"] == "from-file"


def test_worker_command_exits_with_the_message_not_a_traceback():
    env = {"PATH": "/usr/bin:/bin", "RERANK_MAX_INFLIGHT_PAIRS": "-5", "PYTHONPATH": "."}
    proc = subprocess.run([sys.executable, "-m", "streams", "worker"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "RERANK_MAX_INFLIGHT_PAIRS" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_worker_command_says_when_kafka_is_unreachable_and_names_a_variable_it_does_not_read():
    env = {"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "PYTHONPATH": ".",
           "RERANK_STARTUP_TIMEOUT_S": "3", "RERANK_WINDOW_MS": "20"}
    proc = subprocess.run([sys.executable, "-m", "streams", "init-topics"], env={**env, "HOME": "/tmp"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "cannot reach Kafka at 127.0.0.1:1" in proc.stderr
    assert "RERANK_WINDOW_MS is set but no setting reads it" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unread_variables_are_typos_and_removed_settings_not_settings_or_other_programs():
    environ = {"RERANK_MODEL": "m", "RERANK_MAX_BATCH_TOKENS": "1", "KAFKA_BOOTSTRAP_SERVERS": "k",
               "RERANK_MODLE": "typo", "RERANK_WINDOW_MAX_PAIRS": "512", "RERANK_TEST_SEED": "1", "HOME": "/"}
    assert unread_variables(environ) == ["RERANK_MODLE", "RERANK_WINDOW_MAX_PAIRS"]
