"""The peer benchmark's driver: it names the missing environment, and a peer that cannot start is an
error, not a hang. (The peer itself needs .venv-peer, a second torch install, so `make test` does not
build it; `make bench-peer` runs it.)"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from loadgen.bench.peer import agreement, main, model_key, run


def test_a_missing_peer_environment_names_the_make_target(tmp_path):
    result = CliRunner().invoke(main, ["--peer-python", str(tmp_path / "nowhere" / "python")])
    assert result.exit_code == 2
    assert "make bench-peer" in result.output


def test_a_peer_that_cannot_start_is_a_clear_error():
    # The project's own Python has no optimum-intel: the peer script fails at its imports.
    with pytest.raises(RuntimeError, match="the peer process ended"):
        run(Path(sys.executable), quick=True)


def test_agreement_of_scores_with_the_reference():
    same = agreement([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["pearson"] == pytest.approx(1.0) and same["max_abs_diff"] == 0
    reversed_ = agreement([3.0, 2.0, 1.0], [1.0, 2.0, 3.0])
    assert reversed_["spearman"] == pytest.approx(-1.0) and reversed_["max_abs_diff"] == 2.0


def test_the_peers_copy_is_keyed_by_the_model_files_and_the_calibration(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    key = model_key(tmp_path, ["a text"])
    assert model_key(tmp_path, ["a text"]) == key
    assert model_key(tmp_path, ["another text"]) != key
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    assert model_key(tmp_path, ["a text"]) != key
