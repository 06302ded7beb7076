"""Pre-train the digit generator, align it with RAFT, evaluate it on held-out seeds.

Everything trains through jaxalign's shared pieces: :class:`~jaxalign.train.state.TrainState`,
the one pure step (:func:`~jaxalign.train.state.make_train_step`; RAFT's epochs over the kept
samples: :func:`~jaxalign.train.state.make_minibatch_step`), the optax chain of
:func:`~jaxalign.train.optim.make_optimizer`, and the generic RAFT core
(:func:`~jaxalign.algorithms.raft.raft_iteration` with local or global
:class:`~jaxalign.algorithms.raft.Selection`). Only the sampler, the reward and the loss are
the diffusion model's.

Magic-prompt decoupling (RAFT §3): the candidates are drawn *with* classifier-free guidance
(``guidance``, the "magic prompt"), and the plain conditional model (guidance 1) is fine-tuned on
the kept ones, so after alignment it should no longer need the guidance.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.algorithms.raft import RANKINGS, Selection, raft_iteration
from jaxalign.config import OptimConfig
from jaxalign.config.checks import check_ranges, positive
from jaxalign.examples.digits import diffusion
from jaxalign.examples.digits.data import NUM_CLASSES, PIXELS, to_unit
from jaxalign.examples.digits.denoiser import Denoiser
from jaxalign.errors import JaxalignError
from jaxalign.train.optim import make_optimizer
from jaxalign.train.state import TrainState, make_minibatch_step, make_train_step

EVAL_KEY_BASE = 1 << 20  # held-out evaluation keys: never used for training or RAFT sampling
# Where RAFT's guided candidates come from: the model being fine-tuned (RAFT as in the paper) or
# the frozen pre-trained one (guidance compounds otherwise: README, "Digits").
PROPOSALS = ("current", "pretrained")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The demo's knobs. timesteps: diffusion steps T; sample_steps: DDIM steps; hidden / depth:
    the denoiser MLP; pretrain_steps / batch_size / lr / p_uncond: pre-training (label dropped to
    the null label with probability p_uncond, for guidance); guidance: the "magic" CFG scale the
    RAFT candidates are drawn with; ranking / alpha: RAFT selection; prompts: digits per RAFT
    iteration (a multiple of 10, each digit equally often); iterations / raft_lr / epochs /
    num_minibatches: RAFT's fine-tuning (raft_p_uncond: its label dropout, so the null branch
    that guidance subtracts is fine-tuned too); proposal: where the guided candidates come from,
    ``current`` (the model being fine-tuned, as in the paper) or ``pretrained`` (the frozen
    pre-trained model: guidance on a model already fine-tuned on guided samples compounds);
    eval_seeds × eval_per_digit: held-out evaluation samples per digit; reward_steps: training
    steps of the reward classifier; realism_filter: RAFT's reward-hacking filter, candidates that fail the PCA realism
    check (:class:`~jaxalign.examples.digits.reward.Realism`) are never kept; seed: everything else."""

    timesteps: int = 100
    sample_steps: int = 20
    hidden: int = 256
    depth: int = 3
    pretrain_steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    p_uncond: float = 0.1
    guidance: float = 3.0
    ranking: str = "local"
    alpha: float = 0.125
    prompts: int = 80
    iterations: int = 30
    raft_lr: float = 3e-4
    raft_p_uncond: float = 0.0
    epochs: int = 4
    num_minibatches: int = 4
    eval_seeds: int = 5
    eval_per_digit: int = 20
    reward_steps: int = 400
    realism_filter: bool = False
    proposal: str = "pretrained"
    seed: int = 0

    @classmethod
    def tiny(cls, **kw) -> "Settings":
        """Seconds on a CPU: same code, small model, few steps (XLA compiles are most of the time,
        so the evaluation draws as many samples per call as a RAFT iteration: 10 × 16 = 20 prompts
        × K = 8, one compiled sampler for both)."""
        base = dict(timesteps=20, sample_steps=5, hidden=64, depth=1, pretrain_steps=300, batch_size=32,
                    lr=1e-2, prompts=20, iterations=2, epochs=1, num_minibatches=1, eval_seeds=2,
                    eval_per_digit=16, reward_steps=100)
        return cls(**{**base, **kw})

    def __post_init__(self):
        check_ranges(self, {**positive("timesteps", "sample_steps", "hidden", "depth", "pretrain_steps", "batch_size",
                                       "prompts", "iterations", "epochs", "num_minibatches", "eval_seeds",
                                       "eval_per_digit", "reward_steps"),
                            "sample_steps": (1, self.timesteps, True, True), "lr": (0.0, None, False, True),
                            "raft_lr": (0.0, None, False, True), "p_uncond": (0.0, 1.0, True, False),
                            "raft_p_uncond": (0.0, 1.0, True, False),
                            "guidance": (0.0, None, False, True), "alpha": (0.0, 1.0, False, True),
                            "seed": (0, None, True, True)})
        if self.proposal not in PROPOSALS:
            raise JaxalignError(f"proposal must be one of {PROPOSALS}, got {self.proposal!r}")
        if self.ranking not in RANKINGS:
            raise JaxalignError(f"ranking must be one of {RANKINGS}, got {self.ranking!r}")
        if self.prompts % NUM_CLASSES:
            raise JaxalignError(f"prompts must be a multiple of {NUM_CLASSES}, got {self.prompts}")
        kept = self.selection().num_kept(self.prompts)
        if kept % self.num_minibatches:
            raise JaxalignError(f"{kept} kept samples per iteration do not split into num_minibatches="
                                f"{self.num_minibatches}")

    def selection(self) -> Selection:
        """RAFT's :class:`Selection` (local: K = 1/α candidates per prompt; global: one)."""
        return Selection(self.ranking, self.alpha)


class Generator:
    """The diffusion model as pure functions of its parameters: ``graphdef`` + ``alpha_bar`` +
    settings; ``params`` travel separately (in a TrainState)."""

    def __init__(self, s: Settings):
        self.s = s
        model = Denoiser(PIXELS, NUM_CLASSES, hidden=s.hidden, depth=s.depth, rngs=nnx.Rngs(s.seed))
        self.graphdef, self.init_params = nnx.split(model)
        self.alpha_bar = diffusion.cosine_alpha_bar(s.timesteps)
        self._sample = jax.jit(self._sample_impl, static_argnames=("guidance",))

    def eps_fn(self, params) -> diffusion.EpsFn:
        return lambda x, t, y: nnx.merge(self.graphdef, params)(x, t, y)

    def loss_fn(self, p_uncond: float) -> Callable:
        """The shared step's ``loss_fn(params, batch, frozen, rng, extras)`` over ``batch = {x [N, 64],
        label [N], weight [N]}``: the denoising loss at a uniformly drawn step, the label dropped to
        the null label with probability ``p_uncond``."""

        def loss(params, batch, frozen, rng, extras):
            k_t, k_n, k_drop = jax.random.split(rng, 3)
            x0, labels = batch["x"], batch["label"]
            t = jax.random.randint(k_t, labels.shape, 0, self.s.timesteps)
            noise = jax.random.normal(k_n, x0.shape, x0.dtype)
            if p_uncond > 0:
                labels = jnp.where(jax.random.uniform(k_drop, labels.shape) < p_uncond, NUM_CLASSES, labels)
            value, weight = diffusion.denoising_loss(self.eps_fn(params), x0, labels, t, noise, self.alpha_bar,
                                                     batch["weight"])
            return value, (weight, {"denoise": value}, extras)

        return loss

    def _sample_impl(self, params, key, labels, guidance):
        return diffusion.ddim_sample(self.eps_fn(params), key, labels, self.alpha_bar, dim=PIXELS,
                                     steps=self.s.sample_steps, null_label=NUM_CLASSES, guidance=guidance)

    def sample(self, params, key, labels, guidance: float = 1.0):
        """``[N, 64]`` samples in [-1, 1] for int ``labels [N]``; deterministic for a key."""
        return self._sample(params, key, jnp.asarray(labels, jnp.int32), guidance=float(guidance))


def pretrain(gen: Generator, pixels, labels, chunk: int = 100) -> tuple[TrainState, list[float]]:
    """Train the generator on ``(pixels 0..16, labels)`` with the shared step and optimizer, ``chunk``
    steps per jitted ``lax.scan`` (one dispatch per chunk: the model is so small that per-step
    overhead would dominate); returns the state and each chunk's last loss."""
    s = gen.s
    tx, schedule = make_optimizer(OptimConfig(lr=s.lr, schedule="cosine", warmup_steps=min(100, s.pretrain_steps // 10),
                                              weight_decay=0.0, grad_clip=1.0), s.pretrain_steps)
    state = TrainState.create(gen.init_params, tx, s.seed)
    step = make_train_step(gen.loss_fn(s.p_uncond), tx, schedule=schedule)

    @jax.jit
    def run_chunk(state, batches):
        return jax.lax.scan(lambda st, b: step(st, b, None), state, batches)

    x, y = to_unit(pixels), np.asarray(labels, np.int32)
    rng = np.random.default_rng(s.seed)
    losses = []
    for start in range(0, s.pretrain_steps, chunk):
        n = min(chunk, s.pretrain_steps - start)
        idx = np.stack([rng.choice(x.shape[0], s.batch_size, replace=False) for _ in range(n)])
        batches = {"x": x[idx], "label": y[idx], "weight": np.ones(idx.shape, np.float32)}
        state, m = run_chunk(state, batches)
        losses.append(float(m["loss"][-1]))
    return state, losses


def prompt_labels(s: Settings) -> np.ndarray:
    """The digits prompted in one RAFT iteration: each digit ``prompts / 10`` times."""
    return np.tile(np.arange(NUM_CLASSES, dtype=np.int32), s.prompts // NUM_CLASSES)


def raft(gen: Generator, params, reward_fn: Callable, *, guidance: float | None = None,
         filter_fn: Callable | None = None, log: Callable[[int, dict], None] | None = None) -> tuple[TrainState, list[dict]]:
    """``s.iterations`` RAFT iterations from ``params`` through :func:`raft_iteration`.

    Each iteration: the prompted digits (K = 1/α candidates each for local ranking, one for
    global) are sampled with guidance ``guidance`` (default ``s.guidance``) from the current
    params, scored by ``reward_fn(x, labels) -> [N]``, ranked and kept, and the plain conditional
    model is fine-tuned on the kept (image, digit) pairs with the denoising loss (no label
    dropout), ``epochs`` passes in ``num_minibatches`` minibatches. ``filter_fn(samples, rewards)``
    (e.g. :meth:`~jaxalign.examples.digits.reward.Realism.filter_fn`) sets rewards of degenerate
    samples to −inf so they are never kept. Returns the state and each iteration's metrics.
    """
    s = gen.s
    sel = s.selection()
    k = sel.samples_per_prompt
    guidance = s.guidance if guidance is None else guidance
    updates = s.iterations * s.epochs * s.num_minibatches
    tx, schedule = make_optimizer(OptimConfig(lr=s.raft_lr, schedule="constant", grad_clip=1.0), updates)
    state = TrainState.create(params, tx, s.seed + 1)
    ft_step = jax.jit(make_minibatch_step(gen.loss_fn(s.raft_p_uncond), tx, num_minibatches=s.num_minibatches,
                                          epochs=s.epochs, schedule=schedule))
    labels = np.repeat(prompt_labels(s), k)  # row b·K + k: candidate k of prompt b

    def finetune(state, kept, keep):
        batch = {"x": kept["x"], "label": kept["label"], "weight": jnp.asarray(keep, jnp.float32)}
        return ft_step(state, batch, None)

    history = []
    base = jax.random.key(s.seed)
    for i in range(s.iterations):
        source = state.params if s.proposal == "current" else params
        sample_fn = functools.partial(_sample_rows, gen, source, labels, guidance)
        res = raft_iteration(sample_fn, lambda smp: reward_fn(np.asarray(smp["x"]), np.asarray(smp["label"])),
                             sel, jax.random.fold_in(base, i), filter_fn=filter_fn, finetune_fn=finetune,
                             state=state)
        state = res.state
        history.append(res.metrics)
        if log is not None:
            log(i, res.metrics)
    return state, history


def _sample_rows(gen: Generator, params, labels, guidance, key) -> dict:
    return {"x": gen.sample(params, key, labels, guidance), "label": jnp.asarray(labels)}


def _mean_se(per_seed) -> tuple[float, float]:
    a = np.asarray(per_seed, np.float64)
    return float(a.mean()), (float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan"))


def evaluate(gen: Generator, params, reward_fn: Callable, guidance: float = 1.0,
             realism: Callable | None = None) -> dict:
    """Mean reward over held-out seeds (keys never used in training): for each of ``eval_seeds``
    seeds, ``eval_per_digit`` samples of every digit. Returns ``mean``, ``se`` (standard error of
    the per-seed means), ``per_seed``, ``per_digit`` means and the first seed's ``samples``
    ``[10, eval_per_digit, 64]``; with ``realism(x) -> [N] bool``, also ``realistic`` (the
    fraction of all samples it accepts), ``realistic_se`` and ``realistic_per_seed``."""
    s = gen.s
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), s.eval_per_digit)
    per_seed, per_digit, first, real = [], [], None, []
    for seed in range(s.eval_seeds):
        x = np.asarray(gen.sample(params, jax.random.key(EVAL_KEY_BASE + seed), labels, guidance))
        r = reward_fn(x, labels)
        per_seed.append(float(r.mean()))
        if realism is not None:
            real.append(float(np.mean(realism(x))))
        per_digit.append(r.reshape(NUM_CLASSES, -1).mean(axis=1))
        if first is None:
            first = x.reshape(NUM_CLASSES, s.eval_per_digit, PIXELS)
    mean, se = _mean_se(per_seed)
    out = {"mean": mean, "se": se, "per_seed": per_seed,
           "per_digit": np.mean(per_digit, axis=0).tolist(), "samples": first}
    if realism is not None:
        out["realistic"], out["realistic_se"] = _mean_se(real)
        out["realistic_per_seed"] = real
    return out
