"""int8 artefacts follow the CPU's int8 instructions: without VNNI or AMX (AVX2's 16-bit
accumulation saturates with full-range weights) the quantizers use 7-bit weights, and the file has
its own name, so a cache shared between CPUs never hands one CPU the other's model. The recipes'
accuracy on such a CPU is checked by tests/engines/test_families.py on whatever CPU runs it."""
from __future__ import annotations

from pathlib import Path

import pytest

from engines import export, openvino_engine


class NamingCache:
    """Records the files asked for; builds nothing."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get_or_make(self, name, make, what) -> Path:
        self.asked.append(name)
        return Path("/nonexistent") / name


@pytest.mark.parametrize("dot_product, onnx_name", [(True, "model.int8.onnx"), (None, "model.int8.onnx"),
                                                    (False, "model.int8-reduced-range.onnx")])
def test_onnx_int8_is_reduced_range_only_without_vnni(monkeypatch, dot_product, onnx_name):
    monkeypatch.setattr(export, "cpu_has_int8_dot_product", lambda: dot_product)
    cache = NamingCache()
    assert export.onnx_int8_dynamic(cache).name == onnx_name
    assert cache.asked == ["model.fp32.onnx", onnx_name]


@pytest.mark.parametrize("dot_product, fixed", [(True, False), (None, False), (False, True)])
def test_openvino_int8_has_the_overflow_fix_only_without_vnni(monkeypatch, dot_product, fixed):
    monkeypatch.setattr(openvino_engine, "cpu_has_int8_dot_product", lambda: dot_product)
    cache = NamingCache()
    name = openvino_engine.openvino_int8(cache, tokenizer=None, max_length=16, pad_id=0).name
    assert name.endswith("-overflow-fix.xml") is fixed
    assert name.startswith("model.int8-") and name.endswith(".xml")
