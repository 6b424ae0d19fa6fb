"""int8 artefacts follow the CPU's int8 instructions: without VNNI or AMX (AVX2's 16-bit
accumulation saturates with full-range weights) the quantizers use 7-bit weights, and the file has
its own name, so a cache shared between CPUs never hands one CPU the other's model. The recipes'
accuracy on such a CPU is checked by tests/engines/test_families.py on whatever CPU runs it."""
from __future__ import annotations

from pathlib import Path

import pytest

from engines import calibration, export, openvino_engine


class NamingCache:
    """Records the files asked for; builds nothing."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get_or_make(self, name, make, what) -> Path:
        self.asked.append(name)
        return Path("/nonexistent") / name


@pytest.mark.parametrize("dot_product, onnx_name", [(True, "model.int8-static-k.onnx"), (None, "model.int8-static-k.onnx"),
                                                    (False, "model.int8-static-k-reduced-range.onnx")])
def test_onnx_int8_is_reduced_range_only_without_vnni(monkeypatch, dot_product, onnx_name):
    monkeypatch.setattr(export, "cpu_has_int8_dot_product", lambda: dot_product)
    cache = NamingCache()
    assert export.onnx_int8_static(cache, calibration=list, key="k").name == onnx_name
    assert cache.asked == ["model.fp32.onnx", onnx_name]


def test_the_static_int8_names_its_calibration_and_recipe_and_the_old_dynamic_name_is_not_reused():
    """A cache may hold the dynamic recipe's ``model.int8.onnx``: the static model has another
    name, and another recipe or calibration set gives another name again."""
    key = calibration.calibration_key(export.ONNX_INT8_RECIPE)
    assert key != calibration.calibration_key(export.ONNX_INT8_RECIPE + 1)
    assert export.onnx_int8_static(NamingCache(), calibration=list, key=key).name.startswith(f"model.int8-static-{key}")


@pytest.mark.parametrize("dot_product, fixed", [(True, False), (None, False), (False, True)])
def test_openvino_int8_has_the_overflow_fix_only_without_vnni(monkeypatch, dot_product, fixed):
    monkeypatch.setattr(openvino_engine, "cpu_has_int8_dot_product", lambda: dot_product)
    cache = NamingCache()
    name = openvino_engine.openvino_int8(cache, tokenizer=None, max_length=16, pad_id=0).name
    assert name.endswith("-overflow-fix.xml") is fixed
    assert name.startswith("model.int8-") and name.endswith(".xml")
