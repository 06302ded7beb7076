"""The ``ift:`` config section (jax-free: ``jaxalign ift --help`` and config
errors read it without importing JAX); :mod:`jaxalign.algorithms.ift` re-exports it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jaxalign.errors import JaxalignError
from jaxalign.algorithms.sections import check_chunk_size

if TYPE_CHECKING:
    from jaxalign.config import RunConfig

SCHEDULES = ("constant", "linear")


@dataclasses.dataclass
class Config:
    """The ``ift:`` section.

    lam: λ of the temporal residual connection (0.2 in the paper); with ``lam_schedule: linear``
      it is the final value, reached from ``lam_start`` over ``lam_warmup_steps`` updates and
      then held, as the reference code's ``min_lambda`` -> ``max_lambda`` (default: the
      learning-rate warm-up, ``optim.warmup_steps``, which the reference code also uses).
    lam_noise: standard deviation of a relative Gaussian jitter of λ, one draw per optimizer
      step shared by its micro-batches (``λ·(1 + lam_noise·N(0,1))``, clipped to [0, 1]; the
      reference code's ``lambda_disturb`` / ``disturb_std``).
    gamma: γ of the dynamic relation propagation (0.95 in the paper; 0 gives uniform weights).
    train_input_embeddings: ``false`` (default, as the reference code): both halves of the mix
      are read from a frozen copy of the input embeddings, so the mix carries no gradient into
      the table (an untied input table never changes). ``true`` keeps the gradient of the gold
      half, so that λ = 0, γ = 0 is exactly SFT (``sft.aggregation: sequence_mean``).
    lam_schedule: ``constant`` (λ = lam throughout) or ``linear`` (lam_start to lam over
      lam_warmup_steps, then held).
    lam_start: λ at the first update of the linear schedule.
    lam_warmup_steps: updates of the linear ramp; null: optim.warmup_steps.
    chunk_size: run the LM head only on completion tokens, this many positions per row at a
      time (lower peak memory for large vocabularies); null: the full head at once.
    """

    lam: float = 0.2
    lam_schedule: str = "constant"
    lam_start: float = 0.0
    lam_warmup_steps: int | None = None
    lam_noise: float = 0.0
    gamma: float = 0.95
    train_input_embeddings: bool = False
    chunk_size: int | None = None

    def validate(self, cfg: RunConfig) -> None:
        if self.lam_schedule not in SCHEDULES:
            raise JaxalignError(f"config key 'ift.lam_schedule': {self.lam_schedule!r} is not one of {SCHEDULES}")
        for key in ("lam", "lam_start", "gamma"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                raise JaxalignError(f"config key 'ift.{key}': must be in [0, 1], got {v}")
        if self.lam_noise < 0:
            raise JaxalignError(f"config key 'ift.lam_noise': must be >= 0, got {self.lam_noise}")
        if self.lam_warmup_steps is not None and self.lam_warmup_steps <= 0:
            raise JaxalignError(f"config key 'ift.lam_warmup_steps': must be > 0, got {self.lam_warmup_steps}")
        check_chunk_size("ift", self.chunk_size)
