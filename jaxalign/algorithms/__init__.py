"""One module per algorithm: its config dataclass (``Config``) and ``build_job(cfg) -> Job``.

Modules register their config section on import; :func:`get` imports one by name.
"""

from __future__ import annotations

import importlib

# CLI name -> module. The online algorithms join this table as they land.
ALGORITHMS = {
    "sft": "jaxalign.algorithms.sft",
    "rm": "jaxalign.algorithms.rm",
    "dpo": "jaxalign.algorithms.dpo",
    "ift": "jaxalign.algorithms.ift",
    "grpo": "jaxalign.algorithms.grpo",
    "ppo": "jaxalign.algorithms.ppo",
    "raft": "jaxalign.algorithms.raft",
    "online-dpo": "jaxalign.algorithms.online_dpo",
}


def get(name: str):
    """Import and return the module of algorithm ``name``."""
    return importlib.import_module(ALGORITHMS[name])


def available() -> list[str]:
    """Algorithms whose module imports (all of ALGORITHMS once the package is complete)."""
    out = []
    for name in ALGORITHMS:
        try:
            get(name)
        except ImportError:
            continue
        out.append(name)
    return out
