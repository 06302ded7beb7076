"""Which run a checkpoint belongs to, and the check that a resume continues that run.

Every checkpoint's meta carries the run's identity: the algorithm, the settings that must not
change while a run resumes (the model, the seed, the global batch), the parameter dtype, a
fingerprint of the training data's content (the tokenized examples, so a file with two fields
swapped, one token changed or other ``data.max_length`` / ``data.format`` settings differs) and
the whole resolved config. A resume that would continue another run (another algorithm, model or
data) is refused in one line before anything is written; settings that may change (the learning
rate and schedule, ``train.steps``/``epochs``, eval/log/save cadence, micro-batching, the mesh,
the algorithm's own coefficients) are listed in the resume message.
"""

from __future__ import annotations

import json
from typing import Callable

from jaxalign.errors import JaxalignError

# Config keys a resume must keep: the checkpoint and the data order were built from them. (A
# random model's ``model.config`` is checked as the checkpoint's layout, which names the array
# whose shape differs.)
MUST_STAY = ("model.path", "model.init", "model.tokenizer", "seed", "train.batch_size")
# Config keys that name nothing about the run itself.
_NOT_SETTINGS = ("run_dir", "quiet")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" != "model.config":  # a random model's shape: one value
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_identity(cfg, train_batches) -> dict:
    """The identity of the run ``cfg`` trains on ``train_batches`` (JSON-able)."""
    # Through JSON, as the checkpoint meta stores it (tuples become lists), so equal values compare equal.
    flat = json.loads(json.dumps({k: v for k, v in _flat(cfg.to_dict()).items() if k not in _NOT_SETTINGS},
                                 default=str))
    fp = getattr(train_batches, "fingerprint", None)
    examples = getattr(train_batches, "examples", None)
    return {"algorithm": cfg.algorithm,
            "settings": {k: flat.get(k) for k in MUST_STAY},
            "param_dtype": cfg.model.param_dtype,
            "data": fp() if callable(fp) else None,
            "num_examples": len(examples) if examples is not None else None,
            "config": flat}


def _show(v) -> str:
    return "unset" if v is None else repr(v) if isinstance(v, str) else str(v)


def check_resume(saved: dict | None, now: dict, where, allow_cast: bool = False,
                 warn: Callable[[str], None] = print) -> list[str]:
    """Refuse (:class:`JaxalignError`, one line) to resume the run ``saved`` as the run ``now``
    when it is another run; return the changed settings (``"optim.lr 0.0001 -> 0.0002"``).

    A changed ``model.param_dtype`` would cast the checkpoint's parameters: refused unless
    ``allow_cast`` (``train.resume_cast``), then announced through ``warn``. ``saved`` None (a
    checkpoint written before identities were recorded) is accepted as is.
    """
    if not saved:
        return []
    tail = "resume with the run's own config (its config.yaml) or use a new --run-dir"
    if saved.get("algorithm") != now["algorithm"]:
        raise JaxalignError(f"{where}: holds a {saved.get('algorithm')} run; `jaxalign {now['algorithm']}` "
                            f"cannot resume it; use a new --run-dir")
    for key in MUST_STAY:
        a, b = saved.get("settings", {}).get(key), now["settings"].get(key)
        if a != b:
            raise JaxalignError(f"{where}: config key {key!r} is {_show(b)} but the run started with "
                                f"{_show(a)}, and it must stay the same to resume; {tail}")
    if saved.get("data") is not None and now["data"] is not None and saved["data"] != now["data"]:
        rows = (f"{saved.get('num_examples')} examples then, {now['num_examples']} now"
                if saved.get("num_examples") != now["num_examples"] else f"{now['num_examples']} examples both")
        raise JaxalignError(f"{where}: the training data differ from the run's (content fingerprint "
                            f"{saved['data']} then, {now['data']} now; {rows}; data.* settings count as "
                            f"data); {tail}")
    a, b = saved.get("param_dtype"), now["param_dtype"]
    if a is not None and a != b:
        if not allow_cast:
            raise JaxalignError(f"{where}: config key 'model.param_dtype' is {b} but the checkpoint holds {a} "
                                f"parameters; set it back, or add train.resume_cast=true to cast them on purpose")
        warn(f"casting the checkpoint's {a} parameters to {b} (model.param_dtype, train.resume_cast=true)")
    old, new = saved.get("config", {}), now["config"]
    return [f"{k} {_show(old.get(k))} -> {_show(new.get(k))}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in _NOT_SETTINGS and k != "train.resume_cast"]
