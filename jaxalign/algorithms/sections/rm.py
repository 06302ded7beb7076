"""The ``rm:`` config section (jax-free: ``jaxalign rm --help`` and config
errors read it without importing JAX); :mod:`jaxalign.algorithms.rm` re-exports it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jaxalign.errors import JaxalignError

if TYPE_CHECKING:
    from jaxalign.config import RunConfig

LOSSES = ("pairwise", "kwise", "listwise")
_FORMAT_KIND = {"preference": "preference", "pairwise": "preference", "ranked": "ranked", "ranking": "ranked"}


@dataclasses.dataclass
class Config:
    """The ``rm:`` section.

    loss: ``pairwise`` (Bradley–Terry; preference data), ``kwise`` (all pairs of a ranking,
      InstructGPT) or ``listwise`` (Plackett–Luce / ListMLE). ``kwise`` / ``listwise`` train on
      ranked data, or on preference data as rankings of K = 2.
    use_margin: pairwise only: subtract the data's per-pair ``margin`` when it has one.
    center_coef: pairwise only: weight ``c`` of ``c·mean((r_w + r_l)²)`` (≈ 0.01); 0 = off.
    lm_coef: weight β_rm of an LM loss on the chosen (best) response, as in PPO-max; 0 = off.
    chunk_size: run the LM head only on the chosen completions' tokens, this many positions per row at a
      time (lower peak memory for large vocabularies); null: the full head at once.
    """

    loss: str = "pairwise"
    use_margin: bool = True
    center_coef: float = 0.0
    lm_coef: float = 0.0
    chunk_size: int | None = None

    def validate(self, cfg: RunConfig) -> None:
        if self.loss not in LOSSES:
            raise JaxalignError(f"config key 'rm.loss': {self.loss!r} is not one of {LOSSES}")
        if self.center_coef < 0:
            raise JaxalignError(f"config key 'rm.center_coef': must be >= 0, got {self.center_coef}")
        if self.center_coef and self.loss != "pairwise":
            raise JaxalignError(f"config key 'rm.center_coef': only the pairwise loss has a centring "
                                f"term (rm.loss is {self.loss!r}); set it to 0")
        if self.lm_coef < 0:
            raise JaxalignError(f"config key 'rm.lm_coef': must be >= 0, got {self.lm_coef}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise JaxalignError(f"config key 'rm.chunk_size': must be >= 1, got {self.chunk_size}")
        if _FORMAT_KIND.get(cfg.data.format) == "ranked" and self.loss == "pairwise":
            raise JaxalignError("config key 'rm.loss': pairwise needs preference data (prompt, chosen, "
                                "rejected) but data.format is ranked; use rm.loss: kwise or listwise")
