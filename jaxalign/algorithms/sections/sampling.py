"""The ``sampling:`` subsection of the online algorithms (jax-free);
:mod:`jaxalign.algorithms.experience` re-exports it."""

from __future__ import annotations

import dataclasses

from jaxalign.errors import JaxalignError


@dataclasses.dataclass
class SamplingConfig:
    """How completions are drawn (the ``sampling:`` subsection of an online algorithm).

    max_new_tokens: decode slots per completion. temperature / top_k / top_p: as in
    ``jaxalign generate``; log-probs are those of the temperature-scaled full softmax.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def validate(self, section: str) -> None:
        if self.max_new_tokens <= 0:
            raise JaxalignError(f"config key '{section}.max_new_tokens': must be > 0, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise JaxalignError(f"config key '{section}.temperature': must be > 0 for sampling, "
                                f"got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise JaxalignError(f"config key '{section}.top_p': must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k <= 0:
            raise JaxalignError(f"config key '{section}.top_k': must be > 0, got {self.top_k}")
