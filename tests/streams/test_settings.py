"""Worker settings: unusable values stop start-up naming the variable; secrets stay secret."""
from __future__ import annotations

import subprocess
import sys

import pytest

from streams.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in list(__import__("os").environ):
        if var.startswith(("RERANK_", "KAFKA_")):
            monkeypatch.delenv(var)


@pytest.mark.parametrize("var,value", [
    ("RERANK_WINDOW_MAX_PAIRS", "0"),
    ("RERANK_ENGINE", "tensorflow"),
    ("RERANK_REQUEST_TOPIC", "bad topic!"),
    ("KAFKA_BOOTSTRAP_SERVERS", "no-port-here"),
    ("KAFKA_SECURITY_PROTOCOL", "SASL_TLS"),
    ("RERANK_WINDOW_MS", "soon"),
    ("RERANK_WINDOW_GATHER_MS", "-1"),
    ("RERANK_SHUTDOWN_GRACE_S", "0.5"),
    ("RERANK_LOG_REPEAT_S", "-3"),
    ("RERANK_PREFILTER_METHOD", "tfidf"),
])
def test_an_unusable_setting_names_its_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert var in str(exc.value)


def test_prefilter_method_reaches_the_engine_and_names_what_engines_and_contract_know(monkeypatch):
    from typing import get_args

    from engines.config import PREFILTER_METHODS
    from schemas.request import PrefilterMethod
    from streams.settings import WorkerSettings

    assert load_settings().engine_config().prefilter_method == "bm25"  # the default
    monkeypatch.setenv("RERANK_PREFILTER_METHOD", "static")
    assert load_settings().engine_config().prefilter_method == "static"
    allowed = get_args(WorkerSettings.model_fields["prefilter_method"].annotation)
    assert allowed == get_args(PrefilterMethod) == PREFILTER_METHODS


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
    creds = settings.faust_credentials()
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
    env = {"PATH": "/usr/bin:/bin", "RERANK_WINDOW_MAX_PAIRS": "-5", "PYTHONPATH": "."}
    proc = subprocess.run([sys.executable, "-m", "streams", "worker"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "RERANK_WINDOW_MAX_PAIRS" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_worker_command_says_when_kafka_is_unreachable():
    env = {"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "PYTHONPATH": ".",
           "RERANK_STARTUP_TIMEOUT_S": "3"}
    proc = subprocess.run([sys.executable, "-m", "streams", "init-topics"], env={**env, "HOME": "/tmp"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "cannot reach Kafka at 127.0.0.1:1" in proc.stderr
    assert "Traceback" not in proc.stderr
