"""The abstract whole-loop memory plan (jaxalign.algorithms.plan): equal to the concrete preflight
for offline algorithms (the same compiled step), each online part against a hand count from the
shapes (parameters, optimizer state, reference, the sampler's and the reference forward's own
arguments, the KV cache's growth with the number of new tokens), the refusal line (largest
part, knobs, non-zero exit, nothing written) before a run builds anything, a hypothetical mesh,
and an abstract plan of a model of several GiB staying small in memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import flax.nnx as nnx
import jax
import pytest

from jaxalign import algorithms
from jaxalign import parallel as shd
from jaxalign.algorithms.experience import eos_ids
from jaxalign.algorithms.plan import _memory, plan_config
from jaxalign.cli import main
from jaxalign.config import load_config
from jaxalign.models.abstract import abstract_build, with_shardings
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import CausalLM
from jaxalign.rollout.sampler import lower_generate
from jaxalign.train.preflight import fmt_bytes, plan_job

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("params", "opt_state", "other_state", "frozen", "batch", "arguments", "outputs", "aliased", "temp")


def tiny_param_bytes_per_device(vocab=260, h=64, inter=128, layers=2, kv_dim=32, fsdp=8) -> int:
    """The tiny configs' model (tied embeddings): matrices split over 8 fsdp devices, norms replicated."""
    per_layer = h * h + 2 * kv_dim * h + h * h + 3 * inter * h
    return (vocab * h + layers * per_layer) * 4 // fsdp + (layers * 2 * h + h) * 4


@pytest.mark.parametrize("config", ["sft_tiny", "dpo_tiny"])
def test_abstract_plan_equals_the_concrete_preflight(config):
    over = ["data.buckets=[128]"]
    cfg = load_config(str(ROOT / "configs" / f"{config}.yaml"), over)
    concrete = plan_job(cfg, algorithms.build_job(cfg))
    plan = plan_config(load_config(str(ROOT / "configs" / f"{config}.yaml"), over))
    for f in FIELDS:
        assert getattr(plan.step, f) == getattr(concrete, f), f
    assert [p.name for p in plan.phases] == ["train step"]
    assert plan.peak == concrete.total and plan.step.params == tiny_param_bytes_per_device()


@pytest.fixture(scope="module")
def grpo_plan():
    cfg = load_config(str(ROOT / "configs" / "grpo_tiny.yaml"), ["grpo.beta=0.1"])
    return cfg, plan_config(cfg)


def test_online_parts_match_hand_counts(grpo_plan):
    cfg, plan = grpo_plan
    params = tiny_param_bytes_per_device()
    parts = dict(plan.parts)
    assert parts["trainable parameters"] == params
    assert 0 < parts["optimizer state"] - 2 * params <= 64  # AdamW's two moments and int32 counters
    assert parts["reference for the experience's log-probs"] == params  # a frozen copy (beta > 0)
    phases = {p.name: p for p in plan.phases}
    assert list(phases) == ["sampling", "reference forward", "train step"]
    b, g, p_len, t = 8, 4, 64, 16  # batch_size prompts x num_generations; max_prompt_length; max_new_tokens
    rows, width = b * g, p_len + t
    # The sampler's own arguments: prompt ids and mask [8, 64] int32 and the row-valid flags, split
    # 8 ways, the key (uint32[2]), the temperature (f32; top_p is unused without top_p, and jit
    # drops unused arguments), the EOS ids and the pad id (int32).
    from jaxalign.algorithms.common import tokenizer_from

    n_eos = len(eos_ids(tokenizer_from(cfg)))
    assert phases["sampling"].arguments == 2 * b * p_len * 4 // 8 + b // 8 + 8 + 4 + 4 * n_eos + 4
    # The KV cache: keys and values of 2 layers, 32 rows of 64 + 16 positions, 2 heads x 16, f32, / 8.
    assert phases["sampling"].kv_cache == 2 * 2 * rows * width * 2 * 16 * 4 // 8
    assert phases["sampling"].temp >= phases["sampling"].kv_cache
    # The reference forward's: the experience rows' tokens and mask [32, 80] int32 over 8 devices.
    assert phases["reference forward"].arguments == 2 * rows * width * 4 // 8
    assert plan.step.batch_shapes["input_ids"] == (rows, width)
    assert plan.resident == sum(parts.values())
    assert plan.peak == plan.resident + max(p.extra for p in plan.phases)


def test_kv_cache_growth_with_new_tokens_is_at_least_the_counted_cache():
    """The compiled sampler's temporaries grow linearly with max_new_tokens, by at least the KV
    cache's bytes (bfloat16 compute: the cache is bfloat16 when planning, as on an accelerator)."""
    mesh = shd.mesh_for(1, 8, 1)
    mc = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, dtype="bfloat16",
                     param_dtype="bfloat16")
    gd, st = nnx.split(nnx.eval_shape(lambda: CausalLM(mc, rngs=nnx.Rngs(0))))
    st = with_shardings(st, shd.state_shardings(st, mesh))
    temps = []
    with abstract_build():
        for t in (320, 576, 832):
            temps.append(_memory(lower_generate(gd, st, (8, 64), max_new_tokens=t, num_samples=4,
                                                mesh=mesh).compile())["temp_size_in_bytes"])
    kv_per_256 = 2 * 2 * 32 * 256 * 2 * 32 * 2 // 8  # layers x K,V; 32 rows, 256 positions, 2 x 32, bf16; / 8
    d1, d2 = temps[1] - temps[0], temps[2] - temps[1]
    assert abs(d2 - d1) <= 0.02 * d1  # linear in the new tokens
    assert d1 >= kv_per_256


def test_refusal_names_the_largest_part_and_the_knobs(grpo_plan, tmp_path, capsys):
    cfg, plan = grpo_plan
    limit = plan.peak - 1
    rc = main(["plan", "--config", str(ROOT / "configs" / "grpo_tiny.yaml"), f"--device-memory={limit}",
               "grpo.beta=0.1", f"run_dir={tmp_path / 'never'}"])
    out, err = capsys.readouterr()
    err = [line for line in err.splitlines() if line.strip() and not line.startswith("data.")]
    assert rc == 2 and len(err) == 1, err
    name, n = plan.largest()
    assert err[0].startswith(f"error: the run needs about {fmt_bytes(plan.peak)} per device at its peak "
                             f"({plan.peak_phase.name}) but {fmt_bytes(limit)} is available")
    assert f"largest part: {name} {fmt_bytes(n)}" in err[0]
    for knob in ("grpo.num_generations (now 4", "grpo.sampling.max_new_tokens (now 16)", "train.micro_batch_size",
                 "set grpo.beta=0"):
        assert knob in err[0], knob
    assert "does NOT fit (1 B over)" in out and not (tmp_path / "never").exists()
    # Training refuses the same way before it builds or writes anything.
    rc = main(["grpo", "--config", str(ROOT / "configs" / "grpo_tiny.yaml"), "--quiet", "grpo.beta=0.1",
               f"train.device_memory_limit={limit}", f"run_dir={tmp_path / 'run'}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and err and "largest part:" in err[0] and not (tmp_path / "run").exists()


def test_more_devices_than_exist_is_one_clear_line(capsys):
    rc = main(["plan", "--config", str(ROOT / "configs" / "sft_tiny.yaml"), "--devices", str(jax.device_count() * 2)])
    err = capsys.readouterr().err
    assert rc == 2 and "--xla_force_host_platform_device_count" in err and "device(s) here" in err


def test_abstract_plan_of_a_model_of_gibibytes_allocates_nothing_big(tmp_path):
    """A 1.2B-parameter float32 model (4.6 GiB of parameters, 14 GiB with Adam's moments) plans
    on one CPU device in a process whose peak RSS stays under 2.5 GiB."""
    cfg = tmp_path / "big.yaml"
    cfg.write_text("""algorithm: sft
model:
  init: random
  tokenizer: tiny
  config: {vocab_size: 128256, hidden_size: 4096, intermediate_size: 8192, num_hidden_layers: 2,
           num_attention_heads: 32, num_key_value_heads: 8, max_position_embeddings: 512}
data: {train: shipped:sft_tiny.jsonl, max_length: 64, max_prompt_length: 32, buckets: [64]}
train: {steps: 1, batch_size: 2}
mesh: {data: 1, fsdp: 1, tensor: 1}
""")
    code = ("import json, contextlib, io\nfrom jaxalign.cli import main\nbuf = io.StringIO()\n"
            f"with contextlib.redirect_stdout(buf):\n    rc = main(['plan', '--config', {str(cfg)!r}, '--json'])\n"
            "d = json.loads(buf.getvalue().strip().splitlines()[-1])\n"
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec from the forking process
            # (a pytest worker of gibibytes), while VmHWM is this process image's own peak.
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
            "print(json.dumps({'rc': rc, 'params': d['params'], 'rss': int(hwm)}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    n = 2 * 128256 * 4096 + 2 * (2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 8192 * 4096 + 2 * 4096) + 4096
    assert r["rc"] == 0 and r["params"] == 4 * n  # one device holds them all
    assert r["rss"] * 1024 < 2.5 * 2**30 < 4 * n  # VmHWM is in KiB


def test_lora_grpo_plans_the_base_once_as_the_reference(grpo_plan):
    """GRPO with LoRA: the experience's reference log-probs come from the frozen base itself, so
    the plan holds the base once (as large as the full run's reference copy) and no second reference."""
    _, full = grpo_plan
    plan = plan_config(load_config(str(ROOT / "configs" / "grpo_lora_tiny.yaml"), ["grpo.beta=0.1"]))
    parts, full_parts = dict(plan.parts), dict(full.parts)
    assert "reference for the experience's log-probs" not in parts
    assert parts["frozen base (LoRA; the reference when it is the base)"] == \
        full_parts["reference for the experience's log-probs"] == tiny_param_bytes_per_device()
    assert any(p.name == "reference forward" for p in plan.phases)


def test_a_gguf_model_is_planned_from_its_header(tmp_path):
    """``model.path`` a GGUF file (what the ``smollm2-135m-instruct`` alias resolves to): the plan
    reads its header only and equals the concrete preflight of the model loaded from it."""
    import numpy as np

    from tests.io.test_gguf import tiny_hf_tensors, write_gguf

    hf = tiny_hf_tensors(tied=True)
    hf["model.embed_tokens.weight"] = np.random.default_rng(1).standard_normal((260, 32)).astype(np.float32)
    path = write_gguf(tmp_path / "t.gguf", hf)
    over = ["data.buckets=[128]", "model.init=pretrained", f"model.path={path}", "model.config=null"]
    cfg = load_config(str(ROOT / "configs" / "sft_tiny.yaml"), over)
    concrete = plan_job(cfg, algorithms.build_job(cfg))
    plan = plan_config(load_config(str(ROOT / "configs" / "sft_tiny.yaml"), over))
    for f in FIELDS:
        assert getattr(plan.step, f) == getattr(concrete, f), f
