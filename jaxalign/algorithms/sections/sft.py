"""The ``sft:`` config section (jax-free: ``jaxalign sft --help`` and config
errors read it without importing JAX); :mod:`jaxalign.algorithms.sft` re-exports it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jaxalign.errors import JaxalignError
from jaxalign.algorithms.sections import check_chunk_size

if TYPE_CHECKING:
    from jaxalign.config import RunConfig

AGGREGATIONS = ("token_mean", "sequence_mean")


@dataclasses.dataclass
class Config:
    """The ``sft:`` section.

    neftune_alpha: NEFTune noise scale α (5, 10 or 15 in the paper); null turns it off.
    aggregation: ``token_mean`` (every completion token of the global batch weighs the same) or
      ``sequence_mean`` (each sequence's mean NLL, then the mean over sequences).
    chunk_size: run the LM head only on completion tokens, this many positions per row at a
      time, fused with the log-softmax (the ``[B, S, V]`` logits and their gradient are never
      all live; lower peak memory for large vocabularies); null: the full head at once.
    assistant_only_loss: conversational data (``messages`` rows) is trained on the assistant
      turns only, their end-of-turn token included (TRL's ``assistant_only_loss``), and so is a
      message completion holding a tool's result; false: on every token, system and user too.
    completion_only_loss: prompt/completion data is trained on the completion only; false: on
      the prompt too (a message prompt: its assistant turns, when ``assistant_only_loss``).
    """

    neftune_alpha: float | None = None
    aggregation: str = "token_mean"
    chunk_size: int | None = None
    assistant_only_loss: bool = True
    completion_only_loss: bool = True

    def validate(self, cfg: RunConfig) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise JaxalignError(f"config key 'sft.aggregation': {self.aggregation!r} is not one of {AGGREGATIONS}")
        if self.neftune_alpha is not None and self.neftune_alpha < 0:
            raise JaxalignError(f"config key 'sft.neftune_alpha': must be >= 0, got {self.neftune_alpha}")
        check_chunk_size("sft", self.chunk_size)
