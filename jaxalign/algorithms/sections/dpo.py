"""The ``dpo:`` config section (jax-free: ``jaxalign dpo --help`` and config
errors read it without importing JAX); :mod:`jaxalign.algorithms.dpo` re-exports it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jaxalign.errors import JaxalignError
from jaxalign.algorithms.sections import check_chunk_size
from jaxalign.losses.names import DPO_LOSS_TYPES as LOSS_TYPES
from jaxalign.losses.names import dpo_loss_types

if TYPE_CHECKING:
    from jaxalign.config import RunConfig

REFERENCES = ("model", "precomputed")
REFERENCE_FREE_TYPES = ("simpo", "sft", "rpo")
REF_KEYS = ("ref_chosen_logp", "ref_rejected_logp")  # per-example floats for reference: precomputed


@dataclasses.dataclass
class LossConfig:
    """The DPO loss keys offline and online DPO share (one definition, one validation).

    beta: β, the strength of the implicit KL penalty (TRL default 0.1).
    loss_type: one of ``jaxalign.losses.dpo.LOSS_TYPES`` (``sigmoid`` = DPO, ``ipo``, ``simpo``, ...)
      or a list of them, mixed as ``Σ_k loss_weights[k]·loss_k``.
    loss_weights: weights of a list of loss types (default all 1; same length as loss_type).
    label_smoothing: ε (cDPO / robust / EXO / AOT / SimPO); in [0, 0.5).
    """

    beta: float = 0.1
    loss_type: str | list = "sigmoid"
    loss_weights: list | None = None
    label_smoothing: float = 0.0

    def validate_loss(self, section: str) -> None:
        """Errors name ``section`` (``dpo`` or ``online_dpo``) and the key."""
        types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        known = LOSS_TYPES + ("aot_unpaired", "rpo")
        for t in types:
            if t not in known:
                raise JaxalignError(f"config key '{section}.loss_type': unknown loss type {t!r} "
                                    f"(known: {', '.join(LOSS_TYPES)})")
        if not types:
            raise JaxalignError(f"config key '{section}.loss_type': an empty list")
        if self.loss_weights is not None:
            if len(self.loss_weights) != len(types):
                raise JaxalignError(f"config key '{section}.loss_weights': {len(self.loss_weights)} weights for "
                                    f"{len(types)} loss types ({section}.loss_type); give one weight per type")
            if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in self.loss_weights):
                raise JaxalignError(f"config key '{section}.loss_weights': expected numbers, got {self.loss_weights}")
        if self.beta <= 0:
            raise JaxalignError(f"config key '{section}.beta': must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise JaxalignError(f"config key '{section}.label_smoothing': must be in [0, 0.5), "
                                f"got {self.label_smoothing}")


@dataclasses.dataclass
class Config(LossConfig):
    """The ``dpo:`` section: the loss keys of :class:`LossConfig` (beta, loss_type, loss_weights,
    label_smoothing), and:

    reference_free: a uniform reference (ref log-probs = 0); no reference model is built.
    simpo_gamma: SimPO target margin γ. discopop_tau: DiscoPOP temperature τ.
    rpo_alpha: weight of an added NLL term on the chosen completions (RPO); null: off.
    reference: ``model`` (a frozen reference model in memory during training: a copy of the
      policy's starting weights, or ``reference_path``) or ``precomputed`` (one pass over the data
      before training computes the reference log-probs of every pair; no reference model stays
      in memory). Reference-free losses (``reference_free``, ``simpo``) use neither.
    reference_path: the reference model (HF dir, .gguf or alias); default: the policy's start.
    chunk_size: run the LM head only on completion tokens, this many positions per row at a
      time (lower peak memory for large vocabularies); null: the full head at once.
    """

    reference_free: bool = False
    simpo_gamma: float = 0.5
    discopop_tau: float = 0.05
    rpo_alpha: float | None = None
    reference: str = "model"
    reference_path: str | None = None
    chunk_size: int | None = None

    def loss_types(self) -> tuple[str, ...]:
        """The loss types as a tuple (aliases resolved)."""
        return dpo_loss_types(self.loss_type)

    def needs_reference(self) -> bool:
        """False for ``reference_free`` and for mixes of reference-free types only (SimPO, SFT)."""
        return not self.reference_free and not set(self.loss_types()) <= set(REFERENCE_FREE_TYPES)

    def reference_mode(self) -> str | None:
        """``"model"``, ``"precomputed"`` or None (no reference)."""
        return self.reference if self.needs_reference() else None

    def validate(self, cfg: RunConfig) -> None:
        self.validate_loss("dpo")
        types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        if self.discopop_tau <= 0:
            raise JaxalignError(f"config key 'dpo.discopop_tau': must be > 0, got {self.discopop_tau}")
        if self.rpo_alpha is not None and self.rpo_alpha < 0:
            raise JaxalignError(f"config key 'dpo.rpo_alpha': must be >= 0, got {self.rpo_alpha}")
        check_chunk_size("dpo", self.chunk_size)
        if cfg.data.packing and {"aot", "aot_pair"} & set(self.loss_types()):
            raise JaxalignError("config key 'dpo.loss_type': aot and aot_pair sort over the whole batch, "
                                "which packed batches (data.packing) do not keep fixed; set data.packing=false")
        if self.reference not in REFERENCES:
            raise JaxalignError(f"config key 'dpo.reference': {self.reference!r} is not one of {REFERENCES}")
        if not self.needs_reference():
            why = ("dpo.reference_free is true" if self.reference_free
                   else f"loss_type {'/'.join(types)} is reference-free")
            if self.reference == "precomputed":
                raise JaxalignError(f"config key 'dpo.reference': {why}, so there are no reference "
                                    "log-probs to precompute; remove dpo.reference")
            if self.reference_path is not None:
                raise JaxalignError(f"config key 'dpo.reference_path': {why}, so no reference model "
                                    "is used; remove dpo.reference_path")
