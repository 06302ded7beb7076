"""benchmarks/attention_memory.py on a tiny model: the modes it compares differ in memory, not in value."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import attention_memory  # noqa: E402


def test_modes_on_a_tiny_model(tmp_path):
    cfg = {"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    res = attention_memory.run(2, 64, ["false", "attention", "dots"], 1, tmp_path / "m.json")
    keep, attention, dots = res["modes"]["false"], res["modes"]["attention"], res["modes"]["dots"]
    assert abs(keep["loss"] - attention["loss"]) < 1e-6 and abs(keep["loss"] - dots["loss"]) < 1e-6
    assert dots["temp_gib"] < attention["temp_gib"]
    # at least the float32 scores of every layer: 2 layers x 2 rows x 2 heads x 64 x 64 x 4 bytes
    assert (keep["temp_gib"] - attention["temp_gib"]) * 2**30 >= 2 * 2 * 2 * 64 * 64 * 4
    assert len(keep["step_s"]) == 1
