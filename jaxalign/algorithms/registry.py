"""The one table of algorithms: CLI name -> config section, module, one-line help.

An algorithm module defines ``Config`` (the dataclass of its section) and
``build_job(cfg) -> Job``. This table names the module; nothing is imported until it is asked
for, so :func:`jaxalign.config.load_config` reads its section's dataclass from here without
importing every algorithm (and without depending on import order). This module imports nothing
from jaxalign, which is why the config layer below the algorithms may read it.

Adding an algorithm: its loss in ``jaxalign/losses/``, its module in ``jaxalign/algorithms/``,
one row in :data:`ALGORITHMS`, a ``configs/<name>_tiny.yaml`` and its tests.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One row of the table. ``module`` holds ``Config`` and ``build_job``; an algorithm
    registered from outside the package (:func:`register`) may give ``config`` and
    ``build`` directly instead."""

    name: str
    module: str | None = None
    help: str = ""
    config: type | None = None
    build: Callable | None = None

    @property
    def section(self) -> str:
        """The YAML section of its settings (``online-dpo`` -> ``online_dpo``)."""
        return section_of(self.name)

    def load(self):
        """Import and return the algorithm's module."""
        return importlib.import_module(self.module)

    @property
    def config_class(self) -> type:
        """The dataclass of its config section."""
        return self.config if self.config is not None else self.load().Config

    def build_job(self, cfg) -> Any:
        """Its :class:`~jaxalign.train.loop.Job` for a loaded run config."""
        build = self.build if self.build is not None else self.load().build_job
        return build(cfg)


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("sft", "jaxalign.algorithms.sft", "supervised fine-tuning (completion-only loss, NEFTune)"),
    Algorithm("rm", "jaxalign.algorithms.rm", "reward model: pairwise Bradley-Terry, K-wise or Plackett-Luce"),
    Algorithm("dpo", "jaxalign.algorithms.dpo", "direct preference optimisation (every TRL loss type)"),
    Algorithm("kto", "jaxalign.algorithms.kto", "KTO on unpaired desirable/undesirable completions"),
    Algorithm("ift", "jaxalign.algorithms.ift", "intuitive fine-tuning (temporal residual connection)"),
    Algorithm("grpo", "jaxalign.algorithms.grpo", "GRPO / RLOO: group-relative policy optimisation"),
    Algorithm("ppo", "jaxalign.algorithms.ppo", "PPO with the PPO-max recipe (or vanilla)"),
    Algorithm("raft", "jaxalign.algorithms.raft", "RAFT: reward-ranked fine-tuning"),
    Algorithm("online-dpo", "jaxalign.algorithms.online_dpo", "online DPO on pairs sampled from the policy"),
)}
# The algorithms jaxalign ships (ALGORITHMS may grow through register()).
BUILTIN: tuple[str, ...] = tuple(ALGORITHMS)


def section_of(name: str) -> str:
    """The config section of algorithm ``name`` (``online-dpo`` -> ``online_dpo``)."""
    return name.replace("-", "_")


def names() -> list[str]:
    """Every algorithm's CLI name, in table order."""
    return list(ALGORITHMS)


def get(name: str) -> Algorithm:
    """The row of algorithm ``name``; ``KeyError`` when there is none (callers word the error)."""
    return ALGORITHMS[name]


def register(name: str, config: type, build: Callable | None = None, help: str = "") -> Algorithm:
    """Add an algorithm defined outside jaxalign: ``config`` is its section's dataclass,
    ``build(cfg) -> Job`` builds its job. Returns its row."""
    row = Algorithm(name, help=help, config=config, build=build)
    ALGORITHMS[name] = row
    return row
