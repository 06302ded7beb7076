"""The one table of algorithms: CLI name -> config section, module, one-line help.

An algorithm module defines ``build_job(cfg) -> Job``; the dataclass of its section
(``Config``) lives in ``jaxalign/algorithms/sections/<section>.py``, which imports no JAX, so the
CLI lists a section's keys in ``--help`` and :func:`jaxalign.config.load_config` validates a
config without importing JAX, Flax or transformers (the algorithm module re-exports ``Config``).
This table names both modules; nothing is imported until it is asked for (and nothing depends
on import order). This module imports nothing from jaxalign, which is why the config layer below
the algorithms may read it.

Adding an algorithm: its loss in ``jaxalign/losses/``, its module in ``jaxalign/algorithms/``,
its section in ``jaxalign/algorithms/sections/``, one row in :data:`ALGORITHMS`, a
``configs/<name>_tiny.yaml`` and its tests.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One row of the table. ``module`` holds ``build_job`` (and ``Config``, unless
    ``settings`` names a lighter module that holds it); an algorithm registered from outside the
    package (:func:`register`) may give ``config`` and ``build`` directly instead."""

    name: str
    module: str | None = None
    help: str = ""
    config: type | None = None
    build: Callable | None = None
    settings: str | None = None

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
        if self.config is not None:
            return self.config
        return importlib.import_module(self.settings).Config if self.settings else self.load().Config

    def build_job(self, cfg) -> Any:
        """Its :class:`~jaxalign.train.loop.Job` for a loaded run config."""
        build = self.build if self.build is not None else self.load().build_job
        return build(cfg)


def section_of(name: str) -> str:
    """The config section of algorithm ``name`` (``online-dpo`` -> ``online_dpo``)."""
    return name.replace("-", "_")


def _builtin(name: str, help: str) -> Algorithm:
    section = section_of(name)
    return Algorithm(name, f"jaxalign.algorithms.{section}", help, settings=f"jaxalign.algorithms.sections.{section}")


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    _builtin("sft", "supervised fine-tuning (completion-only loss, NEFTune)"),
    _builtin("rm", "reward model: pairwise Bradley-Terry, K-wise or Plackett-Luce"),
    _builtin("dpo", "direct preference optimisation (every TRL loss type)"),
    _builtin("kto", "KTO on unpaired desirable/undesirable completions"),
    _builtin("ift", "intuitive fine-tuning (temporal residual connection)"),
    _builtin("grpo", "GRPO / RLOO: group-relative policy optimisation"),
    _builtin("ppo", "PPO with the PPO-max recipe (or vanilla)"),
    _builtin("raft", "RAFT: reward-ranked fine-tuning"),
    _builtin("online-dpo", "online DPO on pairs sampled from the policy"),
)}
# The algorithms jaxalign ships (ALGORITHMS may grow through register()).
BUILTIN: tuple[str, ...] = tuple(ALGORITHMS)


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
