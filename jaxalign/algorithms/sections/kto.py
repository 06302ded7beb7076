"""The ``kto:`` config section (jax-free: ``jaxalign kto --help`` and config
errors read it without importing JAX); :mod:`jaxalign.algorithms.kto` re-exports it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jaxalign.errors import JaxalignError
from jaxalign.algorithms.sections import check_chunk_size
from jaxalign.losses.names import KTO_LOSS_TYPES as LOSS_TYPES

if TYPE_CHECKING:
    from jaxalign.config import RunConfig

SECTION = "kto"


@dataclasses.dataclass
class Config:
    """The ``kto:`` section.

    beta: β, the strength of the implicit KL penalty (TRL default 0.1).
    loss_type: ``kto`` (the paper's loss, with the batch's KL reference point) or
      ``apo_zero_unpaired`` (APO-zero on unpaired data: no reference point, so no forward
      passes over mismatched pairs).
    desirable_weight, undesirable_weight: λ_D and λ_U, the weights of the desirable and the
      undesirable rows' losses (default 1). With unbalanced data the paper suggests
      ``λ_D·n_D / (λ_U·n_U)`` in [1, 4/3]; the run prints the ratio.
    reference_path: the reference model (HF dir, .gguf or alias); default: a frozen copy of the
      policy's starting weights.
    chunk_size: run the LM head only on completion tokens, this many positions per row at a
      time (lower peak memory for large vocabularies); null: the full head at once.
    """

    beta: float = 0.1
    loss_type: str = "kto"
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    reference_path: str | None = None
    chunk_size: int | None = None

    def validate(self, cfg: RunConfig) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise JaxalignError(f"config key 'kto.loss_type': unknown loss type {self.loss_type!r} "
                                f"(known: {', '.join(LOSS_TYPES)})")
        if self.beta <= 0:
            raise JaxalignError(f"config key 'kto.beta': must be > 0, got {self.beta}")
        for key in ("desirable_weight", "undesirable_weight"):
            if getattr(self, key) <= 0:
                raise JaxalignError(f"config key 'kto.{key}': must be > 0, got {getattr(self, key)}")
        check_chunk_size("kto", self.chunk_size)
        mb = cfg.train.micro_batch_size or cfg.train.batch_size
        if self.loss_type == "kto" and mb < 2:
            key = "train.micro_batch_size" if cfg.train.micro_batch_size else "train.batch_size"
            # With one row the mismatched pair is the row itself, and z₀ its own log-ratio.
            raise JaxalignError(f"config key '{key}': KTO estimates its KL reference point from the other "
                                f"rows of each (micro-)batch, so it needs at least 2 rows, got {mb}")
