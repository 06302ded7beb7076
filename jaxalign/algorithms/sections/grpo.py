"""The ``grpo:`` config section (jax-free: ``jaxalign grpo --help`` and config
errors read it without importing JAX); :mod:`jaxalign.algorithms.grpo` re-exports it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jaxalign.errors import JaxalignError
from jaxalign.algorithms.sections import check_chunk_size
from jaxalign.losses import names as pg
from jaxalign.algorithms.sections.sampling import SamplingConfig
from jaxalign.rewards import RewardConfig, validate_reward

if TYPE_CHECKING:
    from jaxalign.config import RunConfig

ADVANTAGES = ("grpo", "rloo")
# TRL's defaults: GRPOTrainer's beta is 0 (no reference model), RLOOTrainer's 0.05.
DEFAULT_BETA = {"grpo": 0.0, "rloo": 0.05}
# RLOO's importance ratio is one per sequence, exp(Σ_t log π/π_old), as TRL's RLOOTrainer.
DEFAULT_IMPORTANCE_SAMPLING = {"grpo": "token", "rloo": "sequence_sum"}


@dataclasses.dataclass
class OverlongConfig:
    """``grpo.overlong``: DAPO's soft overlong punishment, added to the reward (arXiv:2503.14476
    eq. 13): 0 up to ``max_length − buffer`` completion tokens, then linearly to −1 at
    ``max_length``, −1 beyond. ``max_length`` None: ``sampling.max_new_tokens``.

    buffer: completion tokens before max_length over which the penalty ramps from 0 to −1.
    max_length: completion tokens where the penalty reaches −1; null: sampling.max_new_tokens.
    """

    buffer: int = 4
    max_length: int | None = None

    def validate(self, max_new_tokens: int) -> None:
        top = self.max_length if self.max_length is not None else max_new_tokens
        if self.max_length is not None and self.max_length <= 0:
            raise JaxalignError(f"config key 'grpo.overlong.max_length': must be > 0, got {self.max_length}")
        if not 0 < self.buffer <= top:
            raise JaxalignError(f"config key 'grpo.overlong.buffer': must be in (0, max_length={top}], "
                                f"got {self.buffer}")


@dataclasses.dataclass
class Config:
    """The ``grpo:`` section.

    advantage: ``grpo`` (``(r − mean_G r)/(std_G r + 1e-4)``) or ``rloo`` (``r − mean_{j≠i} r_j``
      on the KL-shaped reward ``r − β Σ_t (logp_old − ref)``).
    num_generations: G, completions per prompt (>= 2).
    beta: KL coefficient; None: TRL's defaults, 0 for GRPO (no reference model in memory), 0.05
      for RLOO. GRPO: ``β·k3`` per token in the loss; RLOO: the reward shaping.
    scale_rewards: GRPO's divisor: ``group`` std, ``batch`` std, or ``none`` (Dr. GRPO).
    loss: ``clip`` (PPO's clipped surrogate) or ``cispo`` (clipped, detached IS weight times
      ``A · log π``; MiniMax-M1).
    importance_sampling: the ratio ``π/π_old``: ``token``; ``sequence`` (GSPO, length-normalised);
      ``sequence_token`` (GSPO-token); ``sequence_sum`` (``π(y)/π_old(y)``, RLOO's). None:
      ``token`` for GRPO, ``sequence_sum`` for RLOO.
    clip_eps / clip_eps_high: ε_low and ε_high of the clip (None: ε; DAPO's clip-higher: 0.28);
      CISPO truncates its weight at ``1 + clip_eps_high``.
    aggregation: TRL's ``loss_type``: ``grpo`` (per-sequence token mean, then mean over
      sequences), ``dapo`` (token mean over the batch), ``bnpo`` (token mean per micro-batch),
      ``dr_grpo`` (token sum / (sequences × max_new_tokens)); ``token_mean`` = ``dapo`` and
      ``sequence_mean`` = ``grpo`` are accepted. None: ``dapo`` for a token-level ratio (TRL's
      default), ``grpo`` for a sequence-level one (the per-sequence objective of GSPO and RLOO).
    dynamic_sampling / max_refills: DAPO's dynamic sampling: drop the groups whose rewards are
      all equal and refill with more prompts, at most ``max_refills`` extra samplings per step.
    overlong: DAPO's overlong reward shaping (see ``OverlongConfig``); None: off.
    chunk_size: run the LM head only on completion tokens, this many positions per row at a
      time (policy and reference forwards; the entropy metric from the same chunks); null: the
      full head at once.
    sampling / reward: see ``SamplingConfig`` and ``RewardConfig``.
    """

    advantage: str = "grpo"
    num_generations: int = 4
    beta: float | None = None
    scale_rewards: str = "group"
    loss: str = "clip"
    importance_sampling: str | None = None
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    aggregation: str | None = None
    dynamic_sampling: bool = False
    max_refills: int = 4
    overlong: OverlongConfig | None = None
    chunk_size: int | None = None
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)

    @property
    def kl_coef(self) -> float:
        """β, with None resolved per advantage (GRPO 0, RLOO 0.05)."""
        return DEFAULT_BETA[self.advantage] if self.beta is None else self.beta

    @property
    def ratio_level(self) -> str:
        """The importance-sampling level, with None resolved per advantage."""
        if self.importance_sampling is None:
            return DEFAULT_IMPORTANCE_SAMPLING[self.advantage]
        return self.importance_sampling

    @property
    def loss_aggregation(self) -> str:
        """TRL's name of the aggregation, with None resolved from the ratio's level."""
        if self.aggregation is None:
            return "dapo" if self.ratio_level == "token" else "grpo"
        return pg.canonical_aggregation(self.aggregation)

    def validate(self, cfg: RunConfig) -> None:
        check_chunk_size("grpo", self.chunk_size)
        if self.advantage not in ADVANTAGES:
            raise JaxalignError(f"config key 'grpo.advantage': {self.advantage!r} is not one of {ADVANTAGES}")
        if self.num_generations < 2:
            raise JaxalignError(f"config key 'grpo.num_generations': needs >= 2 completions per prompt "
                                f"for a group baseline, got {self.num_generations}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise JaxalignError(f"config key 'grpo.scale_rewards': {self.scale_rewards!r} is not one of "
                                "('group', 'batch', 'none')")
        if self.loss not in pg.SURROGATES:
            raise JaxalignError(f"config key 'grpo.loss': {self.loss!r} is not one of {pg.SURROGATES}")
        if self.importance_sampling is not None and self.importance_sampling not in pg.IMPORTANCE_SAMPLING:
            raise JaxalignError(f"config key 'grpo.importance_sampling': {self.importance_sampling!r} is not "
                                f"one of {pg.IMPORTANCE_SAMPLING}")
        names = pg.AGGREGATIONS + tuple(pg.AGGREGATION_ALIASES)
        if self.aggregation is not None and self.aggregation not in names:
            raise JaxalignError(f"config key 'grpo.aggregation': {self.aggregation!r} is not one of {names}")
        if self.beta is not None and self.beta < 0:
            raise JaxalignError(f"config key 'grpo.beta': must be >= 0, got {self.beta}")
        if self.clip_eps <= 0:
            raise JaxalignError(f"config key 'grpo.clip_eps': must be > 0, got {self.clip_eps}")
        if self.clip_eps_high is not None and self.clip_eps_high <= 0:
            raise JaxalignError(f"config key 'grpo.clip_eps_high': must be > 0, got {self.clip_eps_high}")
        if self.max_refills < 0:
            raise JaxalignError(f"config key 'grpo.max_refills': must be >= 0, got {self.max_refills}")
        self.sampling.validate("grpo.sampling")
        validate_reward(self.reward, "grpo.reward")
        if self.overlong is not None:
            self.overlong.validate(self.sampling.max_new_tokens)
