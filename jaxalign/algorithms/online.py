"""The one pipeline of every online algorithm (GRPO/RLOO, online DPO, RAFT, PPO).

An algorithm describes itself with an :class:`OnlineSpec` (samples per prompt, sampling and
reward, where its reference goes, how experience becomes a train batch, its loss, its update
schedule) and :func:`job` builds the :class:`~jaxalign.train.loop.Job`: prompts, policy, frozen
reference, reward, the experience maker, the experience hook (sampling key from the train
state), held-out evaluation, the optimizer and the step. No algorithm builds a Job by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.nnx as nnx
import jax
import numpy as np

from jaxalign.algorithms import common, data_setup
from jaxalign.algorithms.experience import ExperienceMaker, SamplingConfig, reward_from
from jaxalign.algorithms.registry import section_of
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.parallel import host_rows
from jaxalign.rewards import RewardConfig
from jaxalign.train.job import Job
from jaxalign.train.optim import make_optimizer
from jaxalign.train.state import make_minibatch_step

# Salt folded into the step's key for sampling, so it never reuses the train step's own key.
_SAMPLE_SALT = 0x5A4D
REFERENCES = (None, "logps", "frozen")


def _identity(x):
    return x


def _adapters(params):
    from jaxalign.models.lora import split_params

    return split_params(params)[0]


@dataclasses.dataclass
class Setup:
    """What :func:`setup` loaded; the spec's hooks receive it (``params`` is the policy's)."""

    graphdef: Any
    params: Any
    ref_params: Any
    tokenizer: Any
    mesh: Any
    maker: ExperienceMaker
    prompts: Any  # resumable iterator of prompt batches
    eval_prompts: list
    n_train_prompts: int
    eval_columns: dict | None = None  # {source row: other columns} of the held-out prompts
    # model.lora: the frozen base (``params`` minus the adapters, the same arrays) and the graphdef
    # of the reference (the base with adapters off; without LoRA, ``graphdef``).
    base: Any = None
    ref_graphdef: Any = None

    def __post_init__(self):
        if self.ref_graphdef is None:
            self.ref_graphdef = self.graphdef


@dataclasses.dataclass
class OnlineSpec:
    """How an online algorithm plugs into :func:`job`.

    sampling / reward: its ``sampling:`` and ``reward:`` sections.
    make_loss: ``make_loss(setup) -> loss_fn(params, batch, frozen, rng, extras)``.
    samples_per_prompt: completions drawn per prompt (the experience has ``B × this`` rows).
    reference: None; ``"logps"`` (a frozen copy of the starting policy gives ``ref_logps`` in
      the experience); ``"frozen"`` (the copy is the loss's ``frozen`` input).
    to_batch: ``to_batch(experience, metrics, batch) -> (train_batch, metrics)``; ``batch`` is
      what the loop drew (see ``prompts_of``). None: the experience is the batch.
    rows_per_prompt: train rows per prompt (the micro-batch split must divide ``B × this``).
    extras: the loss's checkpointed state (``TrainState.extras``).
    num_minibatches / epochs: more than one update per step (shuffled minibatches, inside one
      jitted step; the schedule counts updates).
    eval_samples_per_prompt: the held-out sampler's samples per prompt (the first is scored);
      None: ``samples_per_prompt``, so evaluation reuses the compiled training sampler.
    prompt_transform / reward_filter: hooks of the experience phase (see
      :class:`~jaxalign.algorithms.experience.ExperienceMaker`).
    dynamic_sampling: ``hook(make, prompt_batch, key, draw) -> (experience, metrics)``, which
      may sample more prompt batches (``draw()``, from the run's prompt iterator; None when it
      ran out) to build the experience (see
      :class:`~jaxalign.algorithms.experience.DynamicSampling`). None: one sampling per step.

    lora_split / lora_join (``model.lora``, a trainable tree beyond one policy): ``lora_split(setup,
      params) -> trainable`` and ``lora_join(trainable, base) -> params``; default the policy's
      adapters (:func:`jaxalign.models.lora.split_params` / ``join_params``).

    Beyond one policy (PPO's critic): ``params(setup)`` the trainable tree, ``policy(params)``
    the policy's part of it (sampled, evaluated, exported); ``make_step(setup, loss_fn, total)
    -> (tx, schedule, step_fn)``; ``n_micro`` micro-batches per update; ``train_batches(setup)``
    the loop's batches and ``prompts_of(batch)`` the prompt batch in one.
    """

    sampling: SamplingConfig
    reward: RewardConfig | list
    make_loss: Callable[[Setup], Callable]
    samples_per_prompt: int = 1
    reference: str | None = None
    to_batch: Callable | None = None
    rows_per_prompt: int = 1
    extras: Any = None
    num_minibatches: int = 1
    epochs: int = 1
    eval_samples_per_prompt: int | None = None
    prompt_transform: Callable | None = None
    reward_filter: Callable | None = None
    dynamic_sampling: Callable | None = None
    params: Callable[[Setup], Any] | None = None
    policy: Callable[[Any], Any] = _identity
    make_step: Callable | None = None
    n_micro: int | None = None
    train_batches: Callable[[Setup], Any] | None = None
    prompts_of: Callable[[Any], dict] = _identity
    lora_split: Callable | None = None
    lora_join: Callable | None = None

    def __post_init__(self):
        if self.reference not in REFERENCES:
            raise ValueError(f"OnlineSpec.reference: {self.reference!r} is not one of {REFERENCES}")


def setup(cfg: RunConfig, *, num_samples: int, sampling: SamplingConfig, reward: RewardConfig | list,
          need_ref: bool, prompt_transform: Callable | None = None,
          reward_filter: Callable | None = None) -> Setup:
    """Load prompts, the policy (and a frozen copy as reference when ``need_ref``) and the reward
    (the prompt rows' other columns go to the reward, looked up by the batches' ``row``)."""
    from jaxalign.data import columns_by_row

    mesh = common.mesh_from(cfg)
    tok = common.tokenizer_from(cfg)
    train, ev = data_setup.datasets_from(cfg, tok, ("prompt",))
    prompts, _ = data_setup.batch_iterators(cfg, train, [], tok.pad_token_id)
    model = common.model_from(cfg, mesh, tok)
    context = model.config.max_position_embeddings
    if cfg.data.max_prompt_length + sampling.max_new_tokens > context:
        key = f"{section_of(cfg.algorithm)}.sampling.max_new_tokens"
        raise JaxalignError(f"config key {key!r}: data.max_prompt_length={cfg.data.max_prompt_length} + "
                            f"{sampling.max_new_tokens} new tokens exceed the model's context of {context} "
                            "positions (max_position_embeddings)")
    tokens = cfg.train.batch_size * num_samples * (cfg.data.max_prompt_length + sampling.max_new_tokens)
    if tokens >= 2**31:
        section = section_of(cfg.algorithm)
        key = f"{section}.num_generations" if hasattr(cfg.algo, "num_generations") else "train.batch_size"
        raise JaxalignError(f"config key {key!r}: {cfg.train.batch_size} prompts x {num_samples} "
                            f"samples of up to {cfg.data.max_prompt_length + sampling.max_new_tokens} tokens is "
                            f"{tokens} tokens per step, more than one array can index (2**31)")
    graphdef, params = nnx.split(model)
    base = ref_graphdef = None
    if cfg.model.lora is not None:
        from jaxalign.models.lora import base_graphdef, split_params

        # The reference is the base with the adapters off: the same arrays, no copy.
        base, ref_graphdef = split_params(params)[1], base_graphdef(graphdef, params)
    ref = None
    if need_ref:
        ref = base if base is not None else common.frozen_copy(params)
    rew = reward_from(reward, tok, mesh)
    maker = ExperienceMaker(graphdef, tok, rew, sampling, num_samples=num_samples, ref_params=ref, mesh=mesh,
                            prompt_transform=prompt_transform, reward_filter=reward_filter,
                            columns=columns_by_row(train), ref_graphdef=ref_graphdef,
                            chunk_size=getattr(cfg.algo, "chunk_size", None))
    return Setup(graphdef, params, ref, tok, mesh, maker, prompts, ev, len(train), columns_by_row(ev),
                 base=base, ref_graphdef=ref_graphdef)


def sample_key(rng_data) -> jax.Array:
    """The sampling key of a step, from the train state's key (so a resumed run samples the same)."""
    return jax.random.fold_in(jax.random.wrap_key_data(rng_data), _SAMPLE_SALT)


def first_samples(maker: ExperienceMaker, rows: dict, scores, num_samples: int, n: int) -> list[dict]:
    """``[{"prompt", "completion", "reward"}]`` of the first sample of each of the first ``n``
    prompts of ``rows`` (``input_ids`` / ``attention_mask`` / ``completion_mask``, ``num_samples``
    rows per prompt), decoded here: only these few rows are decoded."""
    idx = np.arange(n) * num_samples
    prompts, comps = maker.decode_rows({k: np.asarray(rows[k])[idx]
                                        for k in ("input_ids", "attention_mask", "completion_mask")})
    scores = np.asarray(scores)
    return [{"prompt": p, "completion": c, "reward": float(scores[i])} for p, c, i in zip(prompts, comps, idx)]


def make_evaluate(cfg: RunConfig, s: Setup, num_samples: int | None = None) -> Callable | None:
    """``evaluate(params) -> {"reward": mean, "response_length": mean}`` on the held-out prompts
    (and ``reward/<name>``: each component's mean, for a reward list):
    one sample per (plain) prompt, raw reward (no prompt transform, no filter), a fixed key
    (comparable across steps). The sampler draws ``num_samples`` per prompt (default the
    maker's, the training shape, so it reuses the compiled sampler) and the first is scored;
    the last batch is padded with repeats that are not counted. ``evaluate.samples``: the first
    ``train.log_samples`` held-out prompts of the latest call, each with its (first) completion
    and reward."""
    if not s.eval_prompts:
        return None
    from jaxalign.data import full_batches

    maker = s.maker
    g = maker.num_samples if num_samples is None else num_samples
    batches = [(b, real) for _, b, real in full_batches(s.eval_prompts, cfg.train.batch_size,
                                                        s.tokenizer.pad_token_id, cfg.data.buckets,
                                                        max_length=cfg.data.max_length)]

    def evaluate(params):
        rewards, lengths, parts, samples = [], [], {}, []
        for i, (b, real) in enumerate(batches):
            key = jax.random.fold_in(jax.random.key(cfg.seed), i)
            roll = maker.sample(params, b["prompt_ids"], b["prompt_mask"], key, num_samples=g)
            texts = maker.decode(roll) if maker.reward.needs_text else (None, None)
            scores, own = maker.score_parts({"input_ids": roll.tokens, "attention_mask": roll.attention_mask,
                                             "finished": roll.finished}, texts,
                                            maker.columns_of(b, g, s.eval_columns or {}))
            if len(samples) < cfg.train.log_samples:  # only the rows shown are decoded
                rows = {"input_ids": roll.tokens, "attention_mask": roll.attention_mask,
                        "completion_mask": roll.completion_mask}
                samples += first_samples(maker, rows, scores, g, min(cfg.train.log_samples - len(samples), real))
            rewards.append(scores.reshape(-1, g)[:real, 0])
            lengths.append(np.asarray(roll.lengths).reshape(-1, g)[:real, 0])
            for name, v in own.items():
                parts.setdefault(name, []).append(v.reshape(-1, g)[:real, 0])
        out = {"reward": float(np.concatenate(rewards).mean()),
               "response_length": float(np.concatenate(lengths).mean())}
        out.update({f"reward/{name}": float(np.concatenate(v).mean()) for name, v in parts.items()})
        evaluate.samples = samples
        return out

    evaluate.samples = []
    return evaluate


def _default_step(cfg: RunConfig, spec: OnlineSpec, loss_fn, total: int, n_micro: int):
    updates = spec.epochs * spec.num_minibatches
    tx, schedule = make_optimizer(cfg.optim, total * updates)
    if updates == 1:
        return tx, schedule, None  # the loop's own one-update step
    step = make_minibatch_step(loss_fn, tx, num_minibatches=spec.num_minibatches, epochs=spec.epochs,
                               n_micro=n_micro, schedule=schedule)
    return tx, schedule, step


def job(cfg: RunConfig, spec: OnlineSpec) -> Job:
    """The :class:`Job` of an online algorithm: each step samples from the current policy,
    scores, turns the experience into a train batch (``spec.to_batch``) and updates."""
    s = setup(cfg, num_samples=spec.samples_per_prompt, sampling=spec.sampling, reward=spec.reward,
              need_ref=spec.reference == "logps", prompt_transform=spec.prompt_transform,
              reward_filter=spec.reward_filter)
    params = spec.params(s) if spec.params is not None else s.params
    loss_fn = spec.make_loss(s)
    full, lora_info = _identity, None  # full(trainable): the whole trainable tree (policy, critic)
    if s.base is None:
        frozen = common.frozen_copy(s.params) if spec.reference == "frozen" else None
    else:
        # model.lora: the adapters train; the base travels once in frozen = (base, None), and a
        # "frozen" reference is that base (adapters off), not a copy (README: LoRA).
        from jaxalign.algorithms import lora

        ref_is_base, join = spec.reference == "frozen", spec.lora_join or lora.join_adapters
        params = spec.lora_split(s, params) if spec.lora_split is not None else _adapters(params)
        frozen, lora_info = (s.base, None), lora.LoraInfo(ref_is_base, spec.reference is not None)
        # model.lora.dropout drops adapter inputs in the train step only (sampling, the
        # reference and evaluation run undropped).
        loss_fn = lora.with_dropout(lora.on_full(loss_fn, ref_is_base, join), cfg.model.lora.dropout)
        full = lambda p: join(p, s.base)  # noqa: E731 (the same arrays: no copy)
    total = common.num_steps(cfg, s.n_train_prompts)
    n_micro = spec.n_micro
    if n_micro is None:
        n_micro = common.micro_batches(cfg)
        if (cfg.train.batch_size * spec.rows_per_prompt) % n_micro:
            raise JaxalignError("config key 'train.micro_batch_size': must divide train.batch_size")
    make_step = spec.make_step or (lambda s_, loss, t: _default_step(cfg, spec, loss, t, n_micro))
    tx, schedule, step_fn = make_step(s, loss_fn, total)

    batches = spec.train_batches(s) if spec.train_batches is not None else s.prompts

    def draw():
        # More prompts for the dynamic-sampling hook: from the loop's own iterator, so the
        # checkpointed iterator state covers them and a resumed run draws the same.
        try:
            return spec.prompts_of(host_rows.gather_rows(next(batches)))
        except StopIteration:
            return None

    evaluate = make_evaluate(cfg, s, spec.eval_samples_per_prompt)
    last_exp: dict = {}  # without held-out prompts, the samples come from the latest experience

    def experience(state, batch):
        # Several processes: the whole batch on every process, cut back to this process's rows at
        # the end (jaxalign.parallel.host_rows); one process: the batch itself.
        batch = host_rows.gather_rows(batch)
        policy, key = spec.policy(full(state.params)), sample_key(state.rng)
        if spec.dynamic_sampling is None:
            exp, _, metrics = s.maker(policy, spec.prompts_of(batch), key)
        else:
            exp, metrics = spec.dynamic_sampling(lambda prompts, k: s.maker(policy, prompts, k),
                                                 spec.prompts_of(batch), key, draw)
        if evaluate is None and cfg.train.log_samples:
            last_exp.update(exp=exp)  # references only: decoded when the loop asks for samples
        train, metrics = spec.to_batch(exp, metrics, batch) if spec.to_batch is not None else (exp, metrics)
        return host_rows.own_rows(train), metrics

    def samples() -> list[dict]:
        if evaluate is not None:
            return list(evaluate.samples)
        if not last_exp:
            return []
        exp, g = last_exp["exp"], s.maker.num_samples
        scores = exp.get("raw_scores", exp["scores"])  # the reward's own score, as evaluation reports
        return first_samples(s.maker, exp, scores, g, min(cfg.train.log_samples, len(scores) // g))

    export = common.lm_exporter(s.graphdef, s.tokenizer, cfg.model.path)
    return Job(params=params, loss_fn=loss_fn, tx=tx, schedule=schedule, total_steps=total,
               train_batches=batches, mesh=s.mesh, frozen=frozen, extras=spec.extras,
               count_tokens=data_setup.real_tokens, export=lambda p, d: export(spec.policy(full(p)), d),
               n_micro=n_micro, experience=experience, step_fn=step_fn, samples=samples,
               evaluate=(lambda p: evaluate(spec.policy(full(p)))) if evaluate is not None else None,
               lora=lora_info)
