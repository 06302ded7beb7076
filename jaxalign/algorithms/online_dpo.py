"""Online DPO (ALGORITHMS.md §4; Guo et al. 2024, arXiv:2402.04792; TRL's ``OnlineDPOTrainer``).
``jaxalign online-dpo --config configs/online-dpo_tiny.yaml``; the ``online_dpo:`` section is
:class:`Config`.

Each step: take ``train.batch_size`` prompts, draw two completions of each from the **current**
policy (temperature 0.9), score both with the reward (``reward.missing_eos_penalty`` lowers
the score of a completion that never emitted EOS), make the better one ``chosen`` (ties: the
first sample), and take one DPO step against the frozen reference (the starting policy). The
loss is :func:`jaxalign.losses.dpo_loss` through offline DPO's loss function
(:func:`jaxalign.algorithms.dpo.make_loss`), so every DPO ``loss_type`` is available.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.algorithms import dpo, online
from jaxalign.config import RunConfig
from jaxalign.algorithms.sections.online_dpo import Config, OnlineDPOSampling, SECTION  # noqa: F401 (re-exported)


def choose(scores):
    """``chosen [N]`` (0 or 1): which of the two samples of each prompt is preferred — the
    higher score, the first sample on a tie. ``scores``: ``[2N]``, row ``2b + g`` = sample ``g``
    of prompt ``b``. numpy in, numpy out (compared in its own dtype); else jax."""
    xp = np if isinstance(scores, (np.ndarray, list, tuple)) else jnp
    s = xp.asarray(scores).reshape(-1, 2)
    return xp.where(s[:, 0] >= s[:, 1], 0, 1)


def pair_rows(scores):
    """``(chosen_rows, rejected_rows)`` ``[N]``: the row indices of each prompt's preferred and
    other sample in a ``[2N]`` score vector (see :func:`choose`) — the one rule every
    pairs-from-scores path (online DPO, the demo's and the benchmark's DPO data) follows."""
    c = choose(scores)
    xp = np if isinstance(c, np.ndarray) else jnp
    rows = xp.arange(c.shape[0]) * 2
    return rows + c, rows + 1 - c


@jax.jit
def preference_batch(exp: dict) -> dict:
    """A preference batch (``chosen_*`` / ``rejected_*`` ``input_ids``, ``attention_mask``,
    ``completion_mask`` ``[N, P + T]``, plus ``score_chosen`` / ``score_rejected`` ``[N]``) from an
    experience of two samples per prompt."""
    ci, ri = pair_rows(exp["scores"])
    out = {}
    for k in ("input_ids", "attention_mask", "completion_mask"):
        out[f"chosen_{k}"], out[f"rejected_{k}"] = exp[k][ci], exp[k][ri]
    out["score_chosen"], out["score_rejected"] = exp["scores"][ci], exp["scores"][ri]
    return out


def make_loss(graphdef, algo: Config, remat: bool | str = False, ref_graphdef=None):
    """Offline DPO's loss with the reference in ``frozen`` (merged with ``ref_graphdef``, default
    ``graphdef``; with LoRA the base's, adapters off), plus ``kl``: the mean over all
    samples of ``Σ_t (logπ − logπ_ref)`` on the policy's own samples (TRL's ``objective/kl``)."""
    inner = dpo.make_loss(graphdef, algo.dpo_config(), graphdef if ref_graphdef is None else ref_graphdef, remat)
    beta = algo.beta

    def loss_fn(params, batch, frozen, rng, extras):
        loss, (w, metrics, new_extras) = inner(params, batch, frozen, rng, extras)
        metrics = dict(metrics, kl=(metrics["rewards/chosen"] + metrics["rewards/rejected"]) / (2 * beta))
        return loss, (w, metrics, new_extras)

    return loss_fn


def to_batch(exp: dict, metrics: dict, batch=None) -> tuple[dict, dict]:
    """The preference batch of an experience, with the chosen/rejected reward metrics."""
    batch = preference_batch(exp)
    sc, sr = (np.asarray(batch.pop(k)) for k in ("score_chosen", "score_rejected"))
    metrics = dict(metrics, **{"reward/chosen": float(sc.mean()), "reward/rejected": float(sr.mean()),
                               "reward/tie_fraction": float(np.mean(sc == sr))})
    return batch, metrics


def spec(cfg: RunConfig) -> online.OnlineSpec:
    """Online DPO as an online algorithm: two samples per prompt, the reference (the starting
    policy) as the loss's frozen input, pairs from the scores."""
    algo: Config = cfg.algo
    return online.OnlineSpec(
        sampling=algo.sampling, reward=algo.reward, samples_per_prompt=2, reference="frozen",
        make_loss=lambda s: make_loss(s.graphdef, algo, cfg.model.remat, s.ref_graphdef), to_batch=to_batch,
        extras=dpo.initial_extras(algo.dpo_config()))


def build_job(cfg: RunConfig):
    """Prompts, policy, frozen reference, reward and the DPO step as an online job."""
    return online.job(cfg, spec(cfg))
