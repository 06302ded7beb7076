"""The ``online_dpo:`` config section (jax-free: ``jaxalign online-dpo --help`` and config
errors read it without importing JAX); :mod:`jaxalign.algorithms.online_dpo` re-exports it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jaxalign.errors import JaxalignError
from jaxalign.algorithms.sections import check_chunk_size
from jaxalign.losses.names import dpo_loss_types
from jaxalign.algorithms.sections import dpo
from jaxalign.algorithms.sections.sampling import SamplingConfig
from jaxalign.rewards import RewardConfig, validate_reward

if TYPE_CHECKING:
    from jaxalign.config import RunConfig

SECTION = "online_dpo"


@dataclasses.dataclass
class OnlineDPOSampling(SamplingConfig):
    """``online_dpo.sampling``: as :class:`SamplingConfig`, temperature 0.9 by default."""

    temperature: float = 0.9


@dataclasses.dataclass
class Config(dpo.LossConfig):
    """The ``online_dpo:`` section: the DPO loss keys of :class:`jaxalign.algorithms.dpo.LossConfig`
    (``beta``, TRL's online DPO default 0.1; ``loss_type`` / ``loss_weights`` /
    ``label_smoothing`` as in the ``dpo:`` section: ``sigmoid`` = DPO, ``ipo``, ``hinge``, ...,
    or a weighted list), and:

    chunk_size: run the LM head only on completion tokens, this many positions per row at a
      time (policy and reference forwards); null: the full head at once.
    sampling: how the two completions are drawn (temperature 0.9 by default).
    reward: how they are scored (``missing_eos_penalty``: subtracted when a completion has no EOS).
    """

    chunk_size: int | None = None
    sampling: OnlineDPOSampling = dataclasses.field(default_factory=OnlineDPOSampling)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)

    def dpo_config(self) -> dpo.Config:
        """The equivalent offline ``dpo:`` section (reference: the policy's starting copy)."""
        return dpo.Config(**{f.name: getattr(self, f.name) for f in dataclasses.fields(dpo.LossConfig)},
                          chunk_size=self.chunk_size)

    def validate(self, cfg: RunConfig) -> None:
        check_chunk_size("online_dpo", self.chunk_size)
        self.validate_loss(SECTION)
        types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        if set(dpo_loss_types(types)) <= set(dpo.REFERENCE_FREE_TYPES):
            raise JaxalignError(f"config key '{SECTION}.loss_type': {'/'.join(types)} is reference-free; "
                                "online DPO trains against its starting policy (use e.g. sigmoid or ipo)")
        self.sampling.validate(f"{SECTION}.sampling")
        validate_reward(self.reward, f"{SECTION}.reward")
