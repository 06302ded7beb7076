"""Run configuration: dataclasses loaded from YAML, dotted ``key=value`` overrides, strict checks.

- :mod:`~jaxalign.config.schema`: the shared sections and :class:`RunConfig`;
- :mod:`~jaxalign.config.yaml_io`: YAML as plain data, with limits;
- :mod:`~jaxalign.config.coerce`: values checked against the dataclasses' types;
- :mod:`~jaxalign.config.checks`: values checked for sense (ranges, choices);
- :mod:`~jaxalign.config.load`: :func:`load_config` / :func:`save_config`.

An algorithm's own section (``sft:``, ``dpo:``, ...) is the ``Config`` dataclass of its module,
found through :mod:`jaxalign.algorithms.registry`.
"""

from jaxalign.config.load import load_config, save_config
from jaxalign.config.schema import DataConfig, MeshSpec, ModelSpec, OptimConfig, RunConfig, TrainConfig

__all__ = ["DataConfig", "MeshSpec", "ModelSpec", "OptimConfig", "RunConfig", "TrainConfig", "load_config",
           "save_config"]
