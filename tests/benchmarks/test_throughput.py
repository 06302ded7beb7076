"""benchmarks/throughput.py and profile_decode.py: the FLOP counts against the model's real
parameter count and hand computations, the ratios and MFU of the summary, and the profile's
mapping of XLA thunks to operations on a hand-written HLO dump."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import profile_decode as pd  # noqa: E402
import throughput as tp  # noqa: E402

from jaxalign import init_model  # noqa: E402
from jaxalign.models.config import ModelConfig  # noqa: E402


@pytest.mark.parametrize("name,low,high", [("smollm2_135m_config.json", 134_000_000, 135_000_000),
                                           ("llama_1b_config.json", 1_235_000_000, 1_236_000_000)])
def test_model_shape_counts_the_real_models_parameters(name, low, high):
    """N in the MFU formula = the parameters of SmolLM2-135M (and of the GPU benchmark's
    Llama-3.2-1B-shaped model) as jaxalign builds it (tied embedding once), counted from the
    model's own state without allocating it."""
    cfg = ModelConfig(**json.loads((BENCH / name).read_text()))
    state = nnx.state(nnx.eval_shape(lambda: init_model(cfg)), nnx.Param)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state))
    shape = tp.model_shape(BENCH / name)
    assert shape["N"] == n_params
    assert low < n_params < high  # SmolLM2-135M; Llama-3.2-1B: 1.236 B
    assert (shape["L"], shape["HQ"]) == (cfg.num_hidden_layers, cfg.num_attention_heads * cfg.head_dim)


def test_step_flops_by_hand():
    m = {"N": 10, "L": 2, "HQ": 3}
    # SFT: (6N + 12 L HQ S) per token, B S tokens: (60 + 12*2*3*4) * 2*4
    assert tp.step_flops("sft", m, batch=2, seq=4) == (60 + 288) * 8
    # DPO: policy fwd+bwd and reference fwd, (8N + 16 L HQ S) per token over chosen and rejected
    assert tp.step_flops("dpo", m, batch=2, seq=4) == (80 + 384) * 2 * 8
    # generation: 2N per processed token
    assert tp.step_flops("gen", m, 0, 0, gen_tokens=5) == 100


def _run(**kw):
    return {"load_before": 1.0, "load_after": 1.2, "peak_gib": 1.0, **kw}


def test_summary_ratios_and_mfu():
    meta = {"batch": 2, "seq": 4, "model_shape": {"N": 10, "L": 2, "HQ": 3}}
    train = lambda s: _run(step_s=s, first_step_s=s, cpu_s_per_step=2 * s)
    gen = lambda tps: _run(tokens_per_s=tps, median_s=64 / tps, first_call_s=1.0, prompt_tokens=30,
                           batch=1, new_tokens=64)
    results = {"sft": {"jaxalign": [train(4.0), train(2.0)], "torch": [train(3.0)]},
               "gen1": {"jaxalign": [gen(32.0)], "transformers": [gen(16.0), gen(8.0)]}}
    rows = {(r["measure"], r["side"]): r for r in tp.summarize(results, meta, peak=1000.0)}
    jx, pt = rows[("sft", "jaxalign")], rows[("sft", "torch")]
    assert jx["time_s"] == 2.0 and jx["runs"] == 2  # best of the repeats
    assert pt["jaxalign_speedup"] == pytest.approx(1.5) and pt["goal"] == 1.5
    assert jx["mfu"] == pytest.approx(2784 / 2.0 / 1000.0)
    g = rows[("gen1", "transformers")]
    assert g["value"] == 16.0 and g["jaxalign_speedup"] == pytest.approx(2.0)
    assert rows[("gen1", "jaxalign")]["mfu"] == pytest.approx(2 * 10 * (30 + 64) / 2.0 / 1000.0)
    assert "2.00x" in tp.markdown(tp.summarize(results, meta, 1000.0), {
        "machine_before": {"cpu": "x", "cores": 2, "load_average": [1, 1, 1]},
        "machine_after": {"load_average": [1, 1, 1]}, "matmul_peak_flops_per_s": 1e3,
        "batch": 2, "seq": 4, "steps": 1, "new_tokens": 64, "dtype": "float32"})



def test_lora_sides_are_compared_with_jaxaligns_lora_side():
    """``--lora``: TRL + peft is measured against jaxalign's LoRA step, full TRL against full."""
    meta = {"batch": 2, "seq": 4, "model_shape": {"N": 10, "L": 2, "HQ": 3}, "lora": 16}
    train = lambda s: _run(step_s=s, first_step_s=s, cpu_s_per_step=s)
    results = {"dpo": {"jaxalign": [train(2.0)], "trl": [train(3.0)],
                       "jaxalign-lora": [train(1.0)], "trl-lora": [train(4.0)]}}
    rows = {r["side"]: r for r in tp.summarize(results, meta, peak=1000.0)}
    assert rows["trl"]["jaxalign_speedup"] == pytest.approx(1.5)
    assert rows["trl-lora"]["jaxalign_speedup"] == pytest.approx(4.0)
    assert rows["jaxalign-lora"]["goal"] is None and rows["trl-lora"]["goal"] == tp.GOALS["dpo"]
    table = tp.markdown(list(rows.values()), {
        "machine_before": {"cpu": "x", "cores": 2, "load_average": [1, 1, 1]},
        "machine_after": {"load_average": [1, 1, 1]}, "matmul_peak_flops_per_s": 1e3,
        "batch": 2, "seq": 4, "steps": 1, "new_tokens": 64, "dtype": "float32", "lora": 16})
    assert "| TRL + peft, LoRA r16 | 4.00 s | 4.00x |" in table

HLO = '''HloModule jit__generate_jit
  %ynn_fusion.7 = f32[16,1536]{1,0} fusion(%a, %b), kind=kCustom, calls=%fc.7, metadata={op_name="jit(_generate_jit)/while/body/...i,io->...o/dot_general" stack_frame_id=3}, backend_config={}
  %dot.2 = f32[16,3,3,64]{3,2,1,0} dot(%c, %d), lhs_batch_dims={0,1}, metadata={op_name="jit(_generate_jit)/while/body/bkgst,bkth->bkgsh/dot_general" stack_frame_id=9}
  %add_fusion.1 = f32[16,1]{1,0} fusion(%e), kind=kLoop, calls=%fc.1, metadata={op_name="jit(_generate_jit)/while/body/reduce_sum" stack_frame_id=4}
'''


def test_profile_maps_thunks_to_operations(tmp_path):
    (tmp_path / "module_0001.jit__generate_jit.cpu_after_optimizations.txt").write_text(HLO)
    ops = pd.hlo_ops(str(tmp_path))
    assert ops == {"ynn_fusion.7": "...i,io->...o f32[16,1536]",
                   "dot.2": "bkgst,bkth->bkgsh f32[16,3,3,64]",
                   "add_fusion.1": "reduce_sum f32[16,1]"}
    tot = {ops["ynn_fusion.7"]: 3.0, ops["dot.2"]: 1.0, ops["add_fusion.1"]: 4.0}
    summary = pd.summarize(tot, {k: 1 for k in tot})
    assert summary["matmul_share"] == pytest.approx(0.5)
    assert [r["op"] for r in summary["rows"]] == ["reduce_sum f32[16,1]", "...i,io->...o f32[16,1536]",
                                                  "bkgst,bkth->bkgsh f32[16,3,3,64]"]
    assert np.isclose(sum(r["share"] for r in summary["rows"]), 1.0)
