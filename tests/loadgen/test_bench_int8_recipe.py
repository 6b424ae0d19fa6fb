"""The int8-recipe benchmark on a tiny stand-in: both variants build and are timed, and the
shipped table is put back (no figure is checked: the cores here are shared)."""
from __future__ import annotations

import json

from click.testing import CliRunner

import engines.openvino_engine as openvino_engine
from loadgen.bench.int8_recipe import ALL_INT8, SHIPPED, SHIPPED_TABLE, main


def test_both_variants_are_timed_and_the_shipped_recipe_is_restored(tmp_path):
    out = tmp_path / "recipe.json"
    result = CliRunner().invoke(main, ["electra", "--size", "tiny", "--rounds", "1", "--requests", "6", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())["electra"]
    assert report[SHIPPED]["best_pairs_per_s"] > 0 and report[ALL_INT8]["best_pairs_per_s"] > 0
    assert "electra" in SHIPPED_TABLE and openvino_engine.FAMILY_FP32_MATMULS == SHIPPED_TABLE
