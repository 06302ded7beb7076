"""benchmarks/gpu.py --report: the MFU and throughput it prints, against a hand computation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu  # noqa: E402


def test_report_mfu_by_hand(tmp_path):
    # A model of hand-countable shape: hidden 4, 1 layer, 2 heads x 2, 1 kv head, mlp 8, vocab 10
    # (tied): attention 4*4 + 2*4*2 + 4*4 = 48, mlp 3*4*8 = 96, two norms 8 -> layer 152;
    # N = 10*4 + 152 + 4 (final norm) = 196.
    cfg = {"vocab_size": 10, "hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 2, "tie_word_embeddings": True}
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    run = {"meta": {"model_config": str(tmp_path / "m.json"), "batch": 2, "seq": 8},
           "stages": {"matmul": {"flops_per_s": 1e6},
                      "sft": {"first_step_s": 3.0, "step_s": 0.5, "peak_gib": 1.0},
                      "sft-attention": {"first_step_s": 2.0, "step_s": 0.25, "peak_gib": 2.0}}}
    (tmp_path / "gpu.json").write_text(json.dumps(run))
    table = gpu.report(str(tmp_path / "gpu.json"))
    row = next(line for line in table.splitlines() if line.startswith("| sft"))
    # (6N + 12 L HQ S) B S = (6*196 + 12*1*4*8) * 2*8 = (1176 + 384) * 16 = 24960 FLOPs a step;
    # / 0.5 s = 49920 FLOP/s; / 1e6 peak = 4.99 %; 16 tokens / 0.5 s = 32 tokens/s.
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:5] == ["0.500", "32"]
    assert cells[6] == "5.0 %"
    # the remat: attention stage: the same model FLOPs in half the time
    row = next(line for line in table.splitlines() if line.startswith("| sft-attention"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:5] == ["0.250", "64"] and cells[6] == "10.0 %"
