"""Reward model (ALGORITHMS.md §2): a scalar head on the policy backbone, trained on preferences
or rankings.

``jaxalign rm --config configs/rm_tiny.yaml``; the ``rm:`` section is :class:`Config`.

The score of a sequence is the head's output at its **last real token** (from the attention
mask). Losses (:mod:`jaxalign.losses.reward`):

- ``pairwise`` (Bradley–Terry) on preference data: ``−log σ(r_w − r_l − m)`` with the data's
  margin ``m`` when it has one, plus an optional centring term; weight = number of pairs.
- ``kwise`` (InstructGPT, all pairs of a ranking) and ``listwise`` (Plackett–Luce / ListMLE) on
  ranked data ``[B, K, S]``, best first, ragged K masked by ``rank_valid``; weight = number of
  prompts with at least two responses. Preference data also works: each pair is a ranking of
  K = 2 (chosen first), where both equal the pairwise loss without margin.

``lm_coef`` (β_rm of PPO-max) adds the NLL of the chosen / best response's completion tokens
(token mean per sequence, then the mean over the same pairs / prompts as the ranking loss, so
gradient accumulation stays exact). The export is a ``*ForSequenceClassification`` directory
(one label) with the tokenizer; see :func:`rm_exporter` for the padding token it writes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from jaxalign import parallel as shd
from jaxalign.algorithms import common, data_setup
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.algorithms.logps import completion_token_logps
from jaxalign.algorithms.sft import packed_inputs
from jaxalign.losses.reward import kwise_pairwise_loss, pairwise_loss, plackett_luce_loss
from jaxalign.losses.segments import segment_counts, segment_ends, segment_starts, segment_sums
from jaxalign.models.heads import ScalarHeadModel, last_token_index, scalar_head_from_lm
from jaxalign.train.job import Job
from jaxalign.train.optim import make_optimizer
from jaxalign.algorithms.sections.rm import Config, LOSSES, _FORMAT_KIND  # noqa: F401 (re-exported)


def _scores(model: ScalarHeadModel, ids, attn, *, remat: bool | str = False):
    """Scores ``[N]`` at the last real token and the final hidden states ``[N, S, D]``."""
    h = model.backbone.hidden_states(ids, attn, remat=remat)
    values = model.score(h)[..., 0].astype(jnp.float32)
    idx = last_token_index(attn)
    return jnp.take_along_axis(values, idx[:, None], axis=1)[:, 0], h


def _packed_pairs(model: ScalarHeadModel, batch, *, remat: bool | str = False):
    """Scores of a packed preference batch (:mod:`jaxalign.data.packing`): one forward over the
    rows, each segment scored at its own last token. Returns ``(chosen, rejected)`` scores
    ``[R·K]`` (0 in empty pair slots), the hidden states ``[R, S, D]`` and ``[R, 2K]`` slots."""
    seg = batch["segment_ids"]
    k = batch["pair_valid"].shape[-1]
    h = model.backbone.hidden_states(batch["input_ids"], batch["attention_mask"], remat=remat,
                                     **packed_inputs(batch))
    values = model.score(h)[..., 0].astype(jnp.float32)
    per = segment_sums(values, segment_ends(seg), seg, 2 * k)  # one end per segment: its score
    return per[:, 0::2].reshape(-1), per[:, 1::2].reshape(-1), h


def _packed_chosen_nll(model: ScalarHeadModel, h, batch, chunk_size):
    """Token-mean NLL ``[R·K]`` of each pair's chosen completion in a packed batch (what
    :func:`_sequence_nll` gives each chosen row unpacked)."""
    seg, ids = batch["segment_ids"], batch["input_ids"]
    k = batch["pair_valid"].shape[-1]
    mask = batch["completion_mask"].astype(bool).at[:, 0].set(False) & ~segment_starts(seg)
    logps = completion_token_logps(model.backbone, h, ids, mask, chunk_size)
    sums = segment_sums(-logps, mask, seg, 2 * k)[:, 0::2]
    counts = segment_counts(mask, seg, 2 * k)[:, 0::2]
    return (sums / jnp.maximum(counts, 1.0)).reshape(-1)


def _sequence_nll(model: ScalarHeadModel, h, ids, completion_mask, chunk_size):
    """Per-sequence token-mean NLL ``[N]`` of the completion tokens (the SFT loss of each row)."""
    mask = completion_mask.astype(bool).at[:, 0].set(False)
    logps = completion_token_logps(model.backbone, h, ids, mask, chunk_size)
    n = jnp.sum(mask, axis=-1)
    return -jnp.sum(jnp.where(mask, logps, 0.0), axis=-1) / jnp.maximum(n, 1)


def _reward_stats(rewards, valid) -> dict:
    n = jnp.maximum(jnp.sum(valid), 1)
    mean = jnp.sum(jnp.where(valid, rewards, 0.0)) / n
    var = jnp.sum(jnp.where(valid, jnp.square(rewards - mean), 0.0)) / n
    return {"reward_mean": mean, "reward_std": jnp.sqrt(var)}


def make_loss(graphdef, algo: Config, remat: bool | str = False):
    """``loss_fn(params, batch, frozen, rng, extras)`` for the shared train step.

    Preference batches (``chosen_*`` / ``rejected_*`` ``[B, S]``) are scored in one forward over
    ``[chosen; rejected]``; ranked batches (``[B, K, S]``) in one forward over ``[B·K, S]``.
    """

    def loss_fn(params, batch, frozen, rng, extras):
        model = nnx.merge(graphdef, params)
        packed = "segment_ids" in batch
        if packed:
            rw, rl, h = _packed_pairs(model, batch, remat=remat)
            pair_ok = batch["pair_valid"].reshape(-1).astype(bool)
            rewards, valid = jnp.stack([rw, rl], axis=1), jnp.stack([pair_ok, pair_ok], axis=1)
        elif "chosen_input_ids" in batch:
            b = batch["chosen_input_ids"].shape[0]
            cat = {k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], axis=0)
                   for k in ("input_ids", "attention_mask", "completion_mask")}
            r, h = _scores(model, cat["input_ids"], cat["attention_mask"], remat=remat)
            rewards, valid = jnp.stack([r[:b], r[b:]], axis=1), jnp.ones((b, 2), bool)
            best = {k: v[:b] for k, v in cat.items()}
            h_best = h[:b]
        else:
            b, k, s = batch["input_ids"].shape
            flat = {n: batch[n].reshape(b * k, s) for n in ("input_ids", "attention_mask", "completion_mask")}
            r, h = _scores(model, flat["input_ids"], flat["attention_mask"], remat=remat)
            rewards, valid = r.reshape(b, k), batch["rank_valid"].astype(bool)
            best = {n: batch[n][:, 0] for n in ("input_ids", "completion_mask")}
            h_best = h.reshape(b, k, s, -1)[:, 0]
        units = jnp.sum(valid, axis=-1) > 1  # the pairs / prompts the loss is a mean over

        if algo.loss == "pairwise":
            if "rank_valid" in batch:
                raise JaxalignError("rm.loss: pairwise needs preference batches; got a ranked batch")
            margin = batch.get("margin") if algo.use_margin else None
            if packed and margin is not None:
                margin = margin.reshape(-1)
            loss, m = pairwise_loss(rewards[:, 0], rewards[:, 1], margin=margin,
                                    center_coef=algo.center_coef, valid=pair_ok if packed else None)
            metrics = {"accuracy": m["accuracy"], "margin": m["margin"], "chosen": m["chosen"],
                       "rejected": m["rejected"]}
        else:
            fn = kwise_pairwise_loss if algo.loss == "kwise" else plackett_luce_loss
            loss, m = fn(rewards, valid)
            pairs = jnp.triu(jnp.ones((rewards.shape[1],) * 2, bool), 1) & valid[:, :, None] & valid[:, None, :]
            diff = rewards[:, :, None] - rewards[:, None, :]
            metrics = {"accuracy": m["pair_accuracy"], "top1_accuracy": m["top1_accuracy"],
                       "margin": jnp.sum(jnp.where(pairs, diff, 0.0)) / jnp.maximum(jnp.sum(pairs), 1)}
        metrics.update(_reward_stats(rewards, valid), rm_loss=loss)
        if algo.lm_coef:
            if packed:
                nll = _packed_chosen_nll(model, h, batch, algo.chunk_size)
            else:
                nll = _sequence_nll(model, h_best, best["input_ids"], best["completion_mask"], algo.chunk_size)
            lm = jnp.sum(jnp.where(units, nll, 0.0)) / jnp.maximum(jnp.sum(units), 1)
            loss = loss + algo.lm_coef * lm
            metrics["nll"] = lm
        return loss, (jnp.sum(units).astype(jnp.float32), metrics, extras)

    return loss_fn


def score(graphdef, params, input_ids, attention_mask):
    """The reward model's scores ``[N]`` of ``input_ids [N, S]`` (right or left padded)."""
    return nnx.merge(graphdef, params)(jnp.asarray(input_ids), jnp.asarray(attention_mask))


def _is_reward_dir(path: str) -> bool:
    from jaxalign.io.paths import resolve_model_path

    try:
        cfg = resolve_model_path(path) / "config.json"
    except JaxalignError:
        return False  # the policy loader reports it, naming model.path
    if not cfg.is_file():
        return False
    try:
        archs = json.loads(cfg.read_text()).get("architectures") or []
    except (json.JSONDecodeError, AttributeError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in archs)


def build_model(cfg: RunConfig, mesh, tokenizer) -> ScalarHeadModel:
    """The reward model: an exported reward model (``model.path`` holding a
    ``*ForSequenceClassification`` directory) with its head, else the policy backbone
    (pretrained or random) with a fresh head (seeded by ``seed``), sharded over ``mesh``."""
    spec = cfg.model
    if spec.init == "pretrained" and spec.path and _is_reward_dir(spec.path):
        from jaxalign.io.hf import load_hf

        return load_hf(spec.path, dtype=spec.param_dtype, compute_dtype=spec.dtype, mesh=mesh,
                       scalar_head=True)
    model = scalar_head_from_lm(common.model_from(cfg, mesh, tokenizer), seed=cfg.seed)
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.device_put(state, shd.state_shardings(state, mesh)))
    if spec.lora is not None and spec.lora.adapter:
        from jaxalign.io.peft import load_peft_head

        load_peft_head(model, spec.lora.adapter)  # a reward model's adapter: its trained head too
    return model


def _eos_ids(tokenizer, config) -> set:
    ids = {tokenizer.eos_token_id}
    eos = config.eos_token_id
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {i for i in ids if i is not None}


def export_pad_token(tokenizer, config) -> tuple[int, str] | None:
    """The padding token of an exported reward model: ``(id, text)``, or None if none fits.

    transformers' ``*ForSequenceClassification`` reads the score at the rightmost token that is
    not ``pad_token_id`` (it ignores the attention mask). When a tokenizer pads with EOS and the
    sequences end with EOS (as jaxalign's do), it would read the token before the EOS, while
    jaxalign reads the EOS. So the export pads with a special token other than EOS: the
    tokenizer's own pad token if it is not an EOS, else a special token named like a pad, else
    the unknown / end-of-text token, else the lowest-id special token that is not EOS or BOS.
    """
    eos = _eos_ids(tokenizer, config)
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in eos:
        return tokenizer.pad_token_id, tokenizer.pad_token
    special = {i: t.content for i, t in sorted(tokenizer.added_tokens_decoder.items())
               if t.special and i not in eos and i != tokenizer.bos_token_id and i < config.vocab_size}
    for test in (lambda s: "pad" in s.lower(), lambda s: s == tokenizer.unk_token,
                 lambda s: "endoftext" in s.lower(), lambda s: True):
        for i, text in special.items():
            if test(text):
                return i, text
    return None


def rm_exporter(graphdef, tokenizer, cfg: RunConfig | None = None):
    """``export(params, out_dir)``: the reward model as a HF ``*ForSequenceClassification``
    directory (one label, no LM head) plus the tokenizer, with a padding token chosen by
    :func:`export_pad_token` in both ``config.json`` and the tokenizer; with LoRA, merged, and
    ``out_dir/adapter`` the adapters and the head in PEFT's ``SEQ_CLS`` format."""
    from jaxalign.io.load import save_model

    def export(params, out_dir: Path):
        from jaxalign.models.lora import has_lora, merged_model

        model = nnx.merge(graphdef, params)
        if has_lora(model):
            # model.lora: the adapters and the head alone in PEFT's SEQ_CLS format, and the
            # adapters merged into the base (W + (alpha/r) B A) for the full export.
            from jaxalign.io.peft import save_peft

            save_peft(model, Path(out_dir) / "adapter", base_model=cfg.model.path if cfg is not None else None)
            model = merged_model(model)
        pad = export_pad_token(tokenizer, model.config)
        tok = tokenizer
        if pad is None:
            if cfg is not None:
                common.say(cfg, "rm export: the tokenizer has no special token other than EOS to pad "
                                "with; transformers will read the token before a final EOS")
            save_model(model, out_dir)
        else:
            save_model(model, out_dir, extra_config={"pad_token_id": pad[0]})
            if pad[0] != tokenizer.pad_token_id:
                tok = copy.deepcopy(tokenizer)
                tok.pad_token = pad[1]
                if cfg is not None:
                    common.say(cfg, f"rm export: padding with {pad[1]!r} (id {pad[0]}) instead of EOS, "
                                    "so transformers scores the last real token")
        tok.save_pretrained(str(out_dir))

    return export


def build_job(cfg: RunConfig) -> Job:
    """Tokenizer, data, reward model and optimizer for a reward-model run."""
    algo: Config = cfg.algo
    mesh = common.mesh_from(cfg)
    tok = common.tokenizer_from(cfg)
    train, ev = data_setup.datasets_from(cfg, tok, ("preference", "ranked"))
    from jaxalign.data import batch_kind
    from jaxalign.data.sources import describe

    kind = batch_kind(train[0])
    if algo.loss == "pairwise" and kind != "preference":
        raise JaxalignError(f"config key 'rm.loss': pairwise needs preference data (prompt, chosen, rejected) "
                            f"but data.train ({describe(cfg.data.train)}) holds {kind} data; use rm.loss: kwise or listwise")
    if algo.loss != "pairwise" and kind == "preference":
        common.say(cfg, f"rm: {algo.loss} loss on preference data: each pair is a ranking of K=2"
                        + ("; the data's margins are not used" if any("margin" in e for e in train) else ""))
    batches, eval_batches = data_setup.batch_iterators(cfg, train, ev, tok.pad_token_id)
    model = build_model(cfg, mesh, tok)
    graphdef, params = nnx.split(model)
    del model
    total = common.num_steps(cfg, len(train), batches)
    tx, schedule = make_optimizer(cfg.optim, total)
    return Job(params=params, loss_fn=make_loss(graphdef, algo, cfg.model.remat),
               eval_loss_fn=make_loss(graphdef, algo), tx=tx, schedule=schedule, total_steps=total,
               train_batches=batches, eval_batches=eval_batches, mesh=mesh,
               count_tokens=data_setup.real_tokens, export=rm_exporter(graphdef, tok, cfg),
               n_micro=common.micro_batches(cfg))
