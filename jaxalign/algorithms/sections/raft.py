"""The ``raft:`` config section (jax-free: ``jaxalign raft --help`` and config
errors read it without importing JAX); :mod:`jaxalign.algorithms.raft` re-exports it."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from jaxalign.errors import JaxalignError
from jaxalign.algorithms.sections import check_chunk_size
from jaxalign.losses.names import num_top
from jaxalign.algorithms.sections import sft
from jaxalign.algorithms.sections.sampling import SamplingConfig
from jaxalign.rewards import RewardConfig, validate_reward

if TYPE_CHECKING:
    from jaxalign.config import RunConfig

AUTO_MINIBATCHES = 4  # the most minibatches ``raft.num_minibatches: null`` splits the kept set into
RANKINGS = ("local", "global")


@dataclasses.dataclass(frozen=True)
class Selection:
    """How samples are ranked and kept: ``ranking`` ``local`` | ``global`` and the fraction α."""

    ranking: str = "local"
    alpha: float = 0.125

    @property
    def samples_per_prompt(self) -> int:
        """K: ``round(1/α)`` for local ranking, 1 for global ranking."""
        return int(round(1.0 / self.alpha)) if self.ranking == "local" else 1

    def num_kept(self, num_prompts: int) -> int:
        """Rows of the fine-tuning batch: one per prompt (local) or ``max(1, round(α·B))`` (global)."""
        return num_prompts if self.ranking == "local" else num_top(num_prompts, self.alpha)


@dataclasses.dataclass
class RaftSampling(SamplingConfig):
    """``raft.sampling``: as :class:`SamplingConfig`, temperature 0.85 by default (the paper's)."""

    temperature: float = 0.85


@dataclasses.dataclass
class Config:
    """The ``raft:`` section.

    ranking: ``local`` (``K = 1/alpha`` samples per prompt, keep the best of each prompt) or
      ``global`` (one sample per prompt, keep the top ``alpha`` fraction of the batch).
    alpha: α, the kept fraction of samples (paper default 0.125: K = 8); for ``local`` 1/α must
      be a whole number.
    min_length: samples with fewer completion tokens (EOS included) get reward −inf, never kept.
    forbidden_pattern: a regex; samples whose completion text matches get reward −inf.
    generation_template: the prompt the sampler sees, with ``{prompt}`` where the data's prompt
      goes (e.g. ``"Be upbeat! {prompt}"``); the text around ``{prompt}`` is tokenised on its
      own and joined to the prompt's tokens. Training always uses the plain prompt. null: same.
    num_minibatches / epochs: the kept samples are split into ``num_minibatches`` shuffled
      minibatches and passed over ``epochs`` times per iteration, one optimizer update each
      (logged as ``updates``). Defaults follow LMFlow's fine-tuning phase at small scale
      (LMFlow: 4 epochs at per-device batch 1 over the kept set): 2 epochs over small minibatches,
      ``num_minibatches: null`` = as many as divide the kept samples, up to 4.
    aggregation: the SFT loss's ``token_mean`` or ``sequence_mean``.
    chunk_size: run the LM head only on completion tokens, this many positions per row at a
      time (the fine-tuning loss); null: the full head at once.
    sampling / reward: see :class:`SamplingConfig` and :class:`RewardConfig`.
    """

    ranking: str = "local"
    alpha: float = 0.125
    min_length: int | None = None
    forbidden_pattern: str | None = None
    generation_template: str | None = None
    num_minibatches: int | None = None
    epochs: int = 2
    aggregation: str = "token_mean"
    chunk_size: int | None = None
    sampling: RaftSampling = dataclasses.field(default_factory=RaftSampling)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)

    def selection(self) -> Selection:
        return Selection(self.ranking, self.alpha)

    def validate(self, cfg: RunConfig) -> None:
        check_chunk_size("raft", self.chunk_size)
        if self.ranking not in RANKINGS:
            raise JaxalignError(f"config key 'raft.ranking': {self.ranking!r} is not one of {RANKINGS}")
        if not 0.0 < self.alpha <= 1.0:
            raise JaxalignError(f"config key 'raft.alpha': must be in (0, 1], got {self.alpha}")
        if self.ranking == "local" and abs(1.0 / self.alpha - round(1.0 / self.alpha)) > 1e-6:
            raise JaxalignError(f"config key 'raft.alpha': local ranking draws 1/alpha samples per prompt, "
                                f"so 1/alpha must be a whole number (got 1/{self.alpha} = {1 / self.alpha:.4g})")
        if self.min_length is not None and self.min_length < 0:
            raise JaxalignError(f"config key 'raft.min_length': must be >= 0, got {self.min_length}")
        if self.forbidden_pattern is not None:
            try:
                re.compile(self.forbidden_pattern)
            except re.error as e:
                raise JaxalignError(f"config key 'raft.forbidden_pattern': not a valid regex ({e})") from None
        if self.generation_template is not None and self.generation_template.count("{prompt}") != 1:
            raise JaxalignError("config key 'raft.generation_template': must contain '{prompt}' exactly once, "
                                f"got {self.generation_template!r}")
        for key in ("num_minibatches", "epochs"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise JaxalignError(f"config key 'raft.{key}': must be >= 1, got {getattr(self, key)}")
        if self.aggregation not in sft.AGGREGATIONS:
            raise JaxalignError(f"config key 'raft.aggregation': {self.aggregation!r} is not one of "
                                f"{sft.AGGREGATIONS}")
        bs, mb = cfg.train.batch_size, cfg.train.micro_batch_size or cfg.train.batch_size
        if bs > 0 and mb > 0 and bs % mb == 0:  # else train.* reports its own error
            kept = self.selection().num_kept(bs)
            if self.num_minibatches is None:
                self.num_minibatches = auto_minibatches(kept, bs // mb)
            split = self.num_minibatches * (bs // mb)
            if kept % split:
                    raise JaxalignError(f"config key 'raft.num_minibatches': the {kept} samples kept per iteration "
                                    f"do not split into {self.num_minibatches} minibatches of "
                                    f"{split // self.num_minibatches} micro-batches (train.micro_batch_size)")
        self.sampling.validate("raft.sampling")
        validate_reward(self.reward, "raft.reward")



def auto_minibatches(kept: int, n_micro: int, most: int = AUTO_MINIBATCHES) -> int:
    """The default ``raft.num_minibatches``: the largest count up to ``most`` that splits the
    ``kept`` rows into minibatches of whole ``n_micro`` micro-batches (1 when none does)."""
    return max([1] + [d for d in range(2, most + 1) if kept % (d * n_micro) == 0])
