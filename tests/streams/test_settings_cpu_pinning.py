"""RERANK_CPU_PINNING reaches the engines (off unless the worker owns its cores)."""
from __future__ import annotations

import os

import pytest

from streams.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in list(os.environ):
        if var.startswith(("RERANK_", "KAFKA_")):
            monkeypatch.delenv(var)


def test_off_by_default():
    assert load_settings().engine_config.cpu_pinning is False


@pytest.mark.parametrize("value,expected", [("true", True), ("1", True), ("false", False), ("0", False)])
def test_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("RERANK_CPU_PINNING", value)
    assert load_settings().engine_config.cpu_pinning is expected


def test_an_unusable_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("RERANK_CPU_PINNING", "sometimes")
    with pytest.raises(SettingsError, match="RERANK_CPU_PINNING"):
        load_settings()
