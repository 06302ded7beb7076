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
    n = len(kw["tokens"]) if kw.get("tokens") is not None else len(completions)
    rows = host_rows.own_slice(n)
    if not host_rows.multi():
        return reward.parts(prompts, completions, **kw)
    if _has_model(reward) or rows is None:
        result, error = None, None
        try:
            result = reward.parts(prompts, completions, **kw)
        except Exception as e:  # noqa: BLE001 (re-raised below, together with the other processes)
            error = e
        host_rows.raise_together(error)
        return result

    def cut(x):
        return None if x is None else x[rows]

    mine = dict(kw, tokens=cut(kw.get("tokens")), attention_mask=cut(kw.get("attention_mask")),
                finished=cut(kw.get("finished")),
                columns={k: list(v)[rows] for k, v in (kw.get("columns") or {}).items()})
    result, error = None, None
    try:
        total, parts = reward.parts(cut(prompts), cut(completions), **mine)
        result = {"total": np.asarray(total, np.float32), **{f"part/{k}": np.asarray(v, np.float32)
                                                             for k, v in parts.items()}}
    except Exception as e:  # noqa: BLE001
        error = e
    host_rows.raise_together(error)
    whole = host_rows.gather_rows(result)
    return whole["total"], {k[len("part/"):]: v for k, v in whole.items() if k.startswith("part/")}
