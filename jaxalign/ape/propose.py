"""Candidate instructions from the model itself (Zhou et al. 2022, arXiv:2211.01910):

- :func:`propose`: forward-mode generation: each candidate is sampled from a proposal prompt
  built on a different random subset of the demonstrations;
- :func:`vary`: iterative Monte-Carlo search: variations of the best instructions so far.

Duplicates and empty generations are dropped (a weak proposer repeats itself).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from jaxalign.ape.templates import PROPOSAL_PREFIX, VARIATION_PREFIX, clean_instruction, proposal_user, variation_user


def _unique(texts: Sequence[str], seen: set) -> list[str]:
    out = []
    for t in texts:
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def propose(scorer, train: Sequence[tuple[str, str]], *, num_candidates: int, num_demos: int,
            max_new_tokens: int, temperature: float, key, rng: np.random.Generator) -> list[str]:
    """Up to ``num_candidates`` distinct instructions induced from ``num_demos``-row subsets of ``train``."""
    prompts = []
    for _ in range(num_candidates):
        demos = [train[i] for i in rng.choice(len(train), size=num_demos, replace=False)]
        prompts.append(scorer.chat_ids(proposal_user(demos), PROPOSAL_PREFIX + " "))
    texts = scorer.sample(prompts, max_new_tokens=max_new_tokens, key=key, temperature=temperature)
    return _unique([clean_instruction(t, PROPOSAL_PREFIX) for t in texts], set())


def vary(scorer, instructions: Sequence[str], *, per_instruction: int, max_new_tokens: int,
         temperature: float, key, exclude: Sequence[str] = ()) -> list[str]:
    """Distinct variations of ``instructions`` (``per_instruction`` samples each), none in ``exclude``."""
    prompts = [scorer.chat_ids(variation_user(s), VARIATION_PREFIX + " ")
               for s in instructions for _ in range(per_instruction)]
    texts = scorer.sample(prompts, max_new_tokens=max_new_tokens, key=jax.random.fold_in(key, 1),
                          temperature=temperature)
    return _unique([clean_instruction(t) for t in texts], set(exclude) | set(instructions))
