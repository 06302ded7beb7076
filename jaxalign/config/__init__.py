"""Run configuration: dataclasses loaded from YAML, dotted ``key=value`` overrides, strict checks.

- :mod:`~jaxalign.config.schema`: the shared sections and :class:`RunConfig`;
- :mod:`~jaxalign.config.yaml_io`: YAML as plain data, with limits;
- :mod:`~jaxalign.config.coerce`: values checked against the dataclasses' types;
- :mod:`~jaxalign.config.checks`: values checked for sense (ranges, choices);
- :mod:`~jaxalign.config.load`: :func:`load_config` / :func:`save_config`;
- :mod:`~jaxalign.config.trl`: TRL's names of jaxalign keys (accepted or refused, one table);
- :mod:`~jaxalign.config.fields`: each key's meaning (from the dataclass docstrings) and the
  ``--help`` listing.

An algorithm's own section (``sft:``, ``dpo:``, ...) is the ``Config`` dataclass of its
jax-free section module (``jaxalign/algorithms/sections/``), found through
:mod:`jaxalign.algorithms.registry`. Nothing here imports JAX.
"""

from jaxalign.config.load import load_config, save_config
from jaxalign.config.schema import DataConfig, MeshSpec, ModelSpec, OptimConfig, RunConfig, TrainConfig

__all__ = ["DataConfig", "MeshSpec", "ModelSpec", "OptimConfig", "RunConfig", "TrainConfig", "load_config",
           "save_config"]
