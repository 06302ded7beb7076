"""A reward on several processes: each process scores its own rows (see
:mod:`jaxalign.parallel.host_rows`)."""

from __future__ import annotations

import numpy as np

from jaxalign.parallel import host_rows


def _has_model(reward) -> bool:
    return any(r.model_fn is not None for r in getattr(reward, "rewards", [reward]))


def parts_over_processes(reward, prompts, completions, **kw) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``reward.parts(prompts, completions, **kw)`` of all rows, the same on every process.

    Several processes, text rewards only: each scores its own block of rows and the scores are
    gathered; a reward that fails on any process makes every process raise at this step (one
    line naming the process), never a hang. A reward model (alone or in a sum) runs on the
    global mesh with every process taking part, so every process scores all rows. ``kw``:
    ``tokens``, ``attention_mask``, ``finished`` (whole arrays) and ``columns`` (``{name: list}``).
    """
    if not host_rows.multi():
        return reward.parts(prompts, completions, **kw)
    n = len(kw["tokens"]) if kw.get("tokens") is not None else len(completions)
    rows = host_rows.own_slice(n)
    if _has_model(reward) or rows is None:
        return host_rows.together(lambda: reward.parts(prompts, completions, **kw))

    def cut(x):
        return None if x is None else x[rows]

    mine = dict(kw, tokens=cut(kw.get("tokens")), attention_mask=cut(kw.get("attention_mask")),
                finished=cut(kw.get("finished")),
                columns={k: list(v)[rows] for k, v in (kw.get("columns") or {}).items()})

    def score():
        # The float conversion belongs inside the agreed-failure block: a reward returning
        # non-numbers must fail on every process, not leave the others waiting in the gather.
        total, parts = reward.parts(cut(prompts), cut(completions), **mine)
        return {"total": np.asarray(total, np.float32),
                "parts": {k: np.asarray(v, np.float32) for k, v in parts.items()}}

    whole = host_rows.gather_rows(host_rows.together(score))
    return whole["total"], whole["parts"]
