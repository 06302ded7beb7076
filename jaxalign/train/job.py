"""What an algorithm hands to the loop: :class:`Job`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


@dataclasses.dataclass
class Job:
    """What an algorithm hands to :func:`run`.

    ``train_batches`` is an iterator of numpy dict batches with ``state_dict()`` /
    ``load_state_dict()`` (for exact resume); ``eval_batches()`` returns a fresh iterable.
    ``count_tokens(batch)`` gives the tokens processed (for tokens/s). ``export(params, dir)``
    writes the final model in Hugging Face format.
    """

    params: Any
    loss_fn: Callable
    tx: Any
    schedule: Any
    total_steps: int
    train_batches: Iterator
    mesh: Any
    frozen: Any = None
    extras: Any = None
    eval_batches: Callable[[], Any] | None = None
    count_tokens: Callable[[dict], int] = lambda b: int(np.sum(b.get("attention_mask", 0)))
    export: Callable[[Any, Path], None] | None = None
    n_micro: int = 1
    eval_loss_fn: Callable | None = None  # default: loss_fn (e.g. SFT evaluates without NEFTune noise)
    # Online algorithms: ``experience(state, batch) -> (batch, metrics)`` turns each prompt batch
    # into scored samples from the current params before the step; ``evaluate(params) -> metrics``
    # replaces eval batches (e.g. the mean reward on held-out prompts).
    experience: Callable | None = None
    evaluate: Callable | None = None
    # A pure ``step(state, batch, frozen) -> (state, metrics)`` replacing the default one-update
    # step (e.g. :func:`jaxalign.train.state.make_minibatch_step` for PPO epochs over a buffer).
    step_fn: Callable | None = None
    # Online algorithms: ``samples() -> [{"prompt", "completion", "reward"}, ...]``, sample
    # completions of the latest ``evaluate`` (held-out prompts) or, without one, of the latest
    # experience; the loop logs the first ``train.log_samples`` of them at each eval.
    samples: Callable[[], list] | None = None
    # ``model.lora``: :class:`jaxalign.algorithms.lora.LoraInfo` when ``params`` are the adapters
    # and ``frozen`` is ``(base, inner)``; None otherwise.
    lora: Any = None
