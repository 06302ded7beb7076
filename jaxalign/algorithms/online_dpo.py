"""Online DPO (ALGORITHMS.md §4; Guo et al. 2024, arXiv:2402.04792; TRL's ``OnlineDPOTrainer``).
``jaxalign online-dpo --config configs/online-dpo_tiny.yaml``; the ``online_dpo:`` section is
:class:`Config`.

Each step: take ``train.batch_size`` prompts, draw two completions of each from the **current**
policy (temperature 0.9), score both with the reward (``reward.missing_eos_penalty`` lowers
the score of a completion that never emitted EOS), make the better one ``chosen`` (ties: the
first sample), and take one DPO step against the frozen reference (the starting policy). The
loss is :func:`jaxalign.losses.dpo_loss` through offline DPO's loss function
(:func:`jaxalign.algorithms.dpo.make_loss`), so every DPO ``loss_type`` is available.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.algorithms import dpo, online
from jaxalign.algorithms.experience import SamplingConfig
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError
from jaxalign.losses.dpo import LOSS_TYPES, _as_tuple
from jaxalign.rewards import RewardConfig

SECTION = "online_dpo"


@dataclasses.dataclass
class OnlineDPOSampling(SamplingConfig):
    """``online_dpo.sampling``: as :class:`SamplingConfig`, temperature 0.9 by default."""

    temperature: float = 0.9


@dataclasses.dataclass
class Config:
    """The ``online_dpo:`` section.

    beta: β of the DPO loss (TRL's online DPO default 0.1).
    loss_type / loss_weights / label_smoothing: as in the ``dpo:`` section (``sigmoid`` = DPO,
      ``ipo``, ``hinge``, ..., or a weighted list).
    sampling: how the two completions are drawn (temperature 0.9 by default).
    reward: how they are scored (``missing_eos_penalty``: subtracted when a completion has no EOS).
    """

    beta: float = 0.1
    loss_type: str | list = "sigmoid"
    loss_weights: list | None = None
    label_smoothing: float = 0.0
    sampling: OnlineDPOSampling = dataclasses.field(default_factory=OnlineDPOSampling)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)

    def dpo_config(self) -> dpo.Config:
        """The equivalent offline ``dpo:`` section (reference: the policy's starting copy)."""
        return dpo.Config(beta=self.beta, loss_type=self.loss_type, loss_weights=self.loss_weights,
                          label_smoothing=self.label_smoothing)

    def validate(self, cfg: RunConfig) -> None:
        types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        if not types:
            raise JaxalignError(f"config key '{SECTION}.loss_type': an empty list")
        try:
            resolved = _as_tuple(types)
        except ValueError:
            bad = next(t for t in types if t not in LOSS_TYPES + ("aot_unpaired", "rpo"))
            raise JaxalignError(f"config key '{SECTION}.loss_type': unknown loss type {bad!r} "
                                f"(known: {', '.join(LOSS_TYPES)})") from None
        if set(resolved) <= set(dpo.REFERENCE_FREE_TYPES):
            raise JaxalignError(f"config key '{SECTION}.loss_type': {'/'.join(types)} is reference-free; "
                                "online DPO trains against its starting policy (use e.g. sigmoid or ipo)")
        if self.loss_weights is not None and len(self.loss_weights) != len(types):
            raise JaxalignError(f"config key '{SECTION}.loss_weights': {len(self.loss_weights)} weights for "
                                f"{len(types)} loss types ({SECTION}.loss_type)")
        if self.loss_weights is not None and not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in self.loss_weights):
            raise JaxalignError(f"config key '{SECTION}.loss_weights': expected numbers, got {self.loss_weights}")
        if self.beta <= 0:
            raise JaxalignError(f"config key '{SECTION}.beta': must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise JaxalignError(f"config key '{SECTION}.label_smoothing': must be in [0, 0.5), "
                                f"got {self.label_smoothing}")
        self.sampling.validate(f"{SECTION}.sampling")
        self.reward.validate(f"{SECTION}.reward")



def choose(scores):
    """``chosen [N]`` (0 or 1): which of the two samples of each prompt is preferred — the
    higher score, the first sample on a tie. ``scores``: ``[2N]``, row ``2b + g`` = sample ``g``
    of prompt ``b``."""
    s = jnp.asarray(scores).reshape(-1, 2)
    return jnp.where(s[:, 0] >= s[:, 1], 0, 1)


@jax.jit
def preference_batch(exp: dict) -> dict:
    """A preference batch (``chosen_*`` / ``rejected_*`` ``input_ids``, ``attention_mask``,
    ``completion_mask`` ``[N, P + T]``, plus ``score_chosen`` / ``score_rejected`` ``[N]``) from an
    experience of two samples per prompt."""
    c = choose(exp["scores"])
    rows = jnp.arange(c.shape[0]) * 2
    ci, ri = rows + c, rows + 1 - c
    out = {}
    for k in ("input_ids", "attention_mask", "completion_mask"):
        out[f"chosen_{k}"], out[f"rejected_{k}"] = exp[k][ci], exp[k][ri]
    out["score_chosen"], out["score_rejected"] = exp["scores"][ci], exp["scores"][ri]
    return out


def make_loss(graphdef, algo: Config, remat: bool = False):
    """Offline DPO's loss with the reference in ``frozen``, plus ``kl``: the mean over all
    samples of ``Σ_t (logπ − logπ_ref)`` on the policy's own samples (TRL's ``objective/kl``)."""
    inner = dpo.make_loss(graphdef, algo.dpo_config(), graphdef, remat)
    beta = algo.beta

    def loss_fn(params, batch, frozen, rng, extras):
        loss, (w, metrics, new_extras) = inner(params, batch, frozen, rng, extras)
        metrics = dict(metrics, kl=(metrics["rewards/chosen"] + metrics["rewards/rejected"]) / (2 * beta))
        return loss, (w, metrics, new_extras)

    return loss_fn


def build_job(cfg: RunConfig):
    """Prompts, policy, frozen reference, reward and the DPO step as an online job."""
    algo: Config = cfg.algo
    setup = online.setup(cfg, num_samples=2, sampling=algo.sampling, reward=algo.reward, need_ref=False)
    # The reference: the starting policy, fresh buffers (the policy's are donated to the step).
    ref = dpo._copy(setup.params)

    def experience(state, prompt_batch):
        exp, _, metrics = setup.maker(state.params, prompt_batch, online.sample_key(state.rng))
        batch = preference_batch(exp)
        sc, sr = (np.asarray(batch.pop(k)) for k in ("score_chosen", "score_rejected"))
        metrics.update({"reward/chosen": float(sc.mean()), "reward/rejected": float(sr.mean()),
                        "reward/tie_fraction": float(np.mean(sc == sr))})
        return batch, metrics

    job = online.job(cfg, setup, make_loss(setup.graphdef, algo, cfg.model.remat),
                     extras=dpo.initial_extras(algo.dpo_config()))
    return dataclasses.replace(job, experience=experience, frozen=ref)
