"""What every online algorithm builds the same way: prompts, policy, frozen reference, reward,
the experience maker, and the :class:`~jaxalign.train.loop.Job` whose ``experience`` hook turns
each prompt batch into a batch of scored samples before the (shared) train step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.nnx as nnx
import jax
import numpy as np

from jaxalign.algorithms import common
from jaxalign.algorithms.experience import ExperienceMaker, SamplingConfig, reward_from
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.rewards import RewardConfig
from jaxalign.train.job import Job
from jaxalign.train.optim import make_optimizer

# Salt folded into the step's key for sampling, so it never reuses the train step's own key.
_SAMPLE_SALT = 0x5A4D


@dataclasses.dataclass
class Setup:
    graphdef: Any
    params: Any
    ref_params: Any
    tokenizer: Any
    mesh: Any
    maker: ExperienceMaker
    prompts: Any  # resumable iterator of prompt batches
    eval_prompts: list
    n_train_prompts: int


def setup(cfg: RunConfig, *, num_samples: int, sampling: SamplingConfig, reward: RewardConfig,
          need_ref: bool) -> Setup:
    """Load prompts, the policy (and a frozen copy as reference when ``need_ref``) and the reward."""
    mesh = common.mesh_from(cfg)
    tok = common.tokenizer_from(cfg)
    train, ev = common.datasets_from(cfg, tok, ("prompt",))
    prompts, _ = common.batch_iterators(cfg, train, [], tok.pad_token_id)
    model = common.model_from(cfg, mesh, tok)
    context = model.config.max_position_embeddings
    if cfg.data.max_prompt_length + sampling.max_new_tokens > context:
        key = f"{cfg.algorithm.replace('-', '_')}.sampling.max_new_tokens"
        raise JaxalignError(f"config key {key!r}: data.max_prompt_length={cfg.data.max_prompt_length} + "
                            f"{sampling.max_new_tokens} new tokens exceed the model's context of {context} "
                            "positions (max_position_embeddings)")
    tokens = cfg.train.batch_size * num_samples * (cfg.data.max_prompt_length + sampling.max_new_tokens)
    if tokens >= 2**31:
        section = cfg.algorithm.replace("-", "_")
        key = f"{section}.num_generations" if hasattr(cfg.algo, "num_generations") else "train.batch_size"
        raise JaxalignError(f"config key {key!r}: {cfg.train.batch_size} prompts x {num_samples} "
                            f"samples of up to {cfg.data.max_prompt_length + sampling.max_new_tokens} tokens is "
                            f"{tokens} tokens per step, more than one array can index (2**31)")
    graphdef, params = nnx.split(model)
    # The reference is the starting policy: a copy (jnp arrays are immutable, so sharing the
    # buffers is safe only until the first donated step; copy to keep it frozen).
    ref = jax.tree.map(lambda x: x.copy(), params) if need_ref else None
    rew = reward_from(reward, tok, mesh)
    maker = ExperienceMaker(graphdef, tok, rew, sampling, num_samples=num_samples, ref_params=ref, mesh=mesh)
    return Setup(graphdef, params, ref, tok, mesh, maker, prompts, ev, len(train))


def sample_key(rng_data) -> jax.Array:
    """The sampling key of a step, from the train state's key (so a resumed run samples the same)."""
    return jax.random.fold_in(jax.random.wrap_key_data(rng_data), _SAMPLE_SALT)


def make_evaluate(cfg: RunConfig, s: Setup) -> Callable | None:
    """``evaluate(params) -> {"reward": mean, "response_length": mean}`` on the held-out prompts,
    with a fixed key (comparable across steps). Batches have the training shape (the last one
    padded with repeats that are not counted), so evaluation reuses the compiled sampler."""
    if not s.eval_prompts:
        return None
    from jaxalign.data import collate

    bs = cfg.train.batch_size
    prompts = list(s.eval_prompts)
    batches = []
    for i in range(0, len(prompts), bs):
        chunk = prompts[i:i + bs]
        real = len(chunk)
        chunk = chunk + [chunk[-1]] * (bs - real)
        batches.append((collate(chunk, s.tokenizer.pad_token_id, buckets=cfg.data.buckets,
                                max_length=cfg.data.max_length), real))
    maker = s.maker

    def evaluate(params):
        rewards, lengths = [], []
        for i, (b, real) in enumerate(batches):
            key = jax.random.fold_in(jax.random.key(cfg.seed), i)
            roll = maker.sample(params, b["prompt_ids"], b["prompt_mask"], key)
            g = maker.num_samples
            texts = maker.decode(roll) if maker.reward.needs_text else (None, None)
            scores = maker.reward(*texts, tokens=roll.tokens, attention_mask=roll.attention_mask,
                                  finished=np.asarray(roll.finished))
            # One sample per prompt (the first), real prompts only.
            rewards.append(scores.reshape(-1, g)[:real, 0])
            lengths.append(np.asarray(roll.lengths).reshape(-1, g)[:real, 0])
        return {"reward": float(np.concatenate(rewards).mean()),
                "response_length": float(np.concatenate(lengths).mean())}

    return evaluate


def job(cfg: RunConfig, s: Setup, loss_fn, *, postprocess: Callable | None = None,
        rows_per_prompt: int = 1, extras=None) -> Job:
    """The :class:`Job` of an online algorithm: each step samples from the current params."""
    total = common.num_steps(cfg, s.n_train_prompts)
    tx, schedule = make_optimizer(cfg.optim, total)

    def experience(state, prompt_batch):
        exp, _, metrics = s.maker(state.params, prompt_batch, sample_key(state.rng))
        if postprocess is not None:
            exp = postprocess(exp)
        return exp, metrics

    n_micro = common.micro_batches(cfg)
    if (cfg.train.batch_size * rows_per_prompt) % n_micro:
        raise JaxalignError("config key 'train.micro_batch_size': must divide train.batch_size")
    return Job(params=s.params, loss_fn=loss_fn, tx=tx, schedule=schedule, total_steps=total,
               train_batches=s.prompts, mesh=s.mesh, frozen=None, extras=extras,
               count_tokens=common.real_tokens, export=common.lm_exporter(s.graphdef, s.tokenizer),
               n_micro=n_micro, experience=experience, evaluate=make_evaluate(cfg, s))
