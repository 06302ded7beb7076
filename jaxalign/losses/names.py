"""The losses' option names (loss types, estimators, aggregations), apart from the JAX code:
the config checks (:mod:`jaxalign.algorithms.sections`) validate a config with them without
importing JAX. Each loss module re-exports its own."""

from __future__ import annotations

DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard",
    "aot", "aot_pair", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "simpo", "sft",
)
DPO_ALIASES = {"aot_unpaired": "aot_pair", "rpo": "sft"}

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")

KL_ESTIMATORS = ("k1", "k2", "k3")

AGGREGATIONS = ("grpo", "bnpo", "dapo", "dr_grpo")
# The names jaxalign used before it adopted TRL's: kept so that existing configs keep working.
AGGREGATION_ALIASES = {"token_mean": "dapo", "sequence_mean": "grpo"}
IMPORTANCE_SAMPLING = ("token", "sequence", "sequence_token", "sequence_sum")
SURROGATES = ("clip", "cispo")


def dpo_loss_types(loss_type) -> tuple[str, ...]:
    """A DPO ``loss_type`` (a name or a list of them) as a tuple, aliases resolved."""
    types = (loss_type,) if isinstance(loss_type, str) else tuple(loss_type)
    out = tuple(DPO_ALIASES.get(t, t) for t in types)
    for t in out:
        if t not in DPO_LOSS_TYPES:
            raise ValueError(f"unknown loss_type {t!r}; expected one of {DPO_LOSS_TYPES}")
    if not out:
        raise ValueError("loss_type is empty")
    return out


def canonical_aggregation(aggregation: str) -> str:
    """TRL's name of an aggregation (``token_mean`` -> ``dapo``, ``sequence_mean`` -> ``grpo``)."""
    name = AGGREGATION_ALIASES.get(aggregation, aggregation)
    if name not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS + tuple(AGGREGATION_ALIASES)}, "
                         f"got {aggregation!r}")
    return name


def num_top(batch_size: int, fraction: float) -> int:
    """Number kept by global ranking: ``max(1, round(α · b))`` (static)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, int(round(fraction * batch_size)))
