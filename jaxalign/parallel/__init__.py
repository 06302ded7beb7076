"""Everything about where arrays live: the device mesh, logical-axis rules for parameters, the
one batch-sharding rule, and multi-process start-up.

- :mod:`jaxalign.parallel.mesh`: ``('data', 'fsdp', 'tensor')`` meshes.
- :mod:`jaxalign.parallel.rules`: logical axis names of parameters -> ``PartitionSpec``; the
  rules table is overridable (``mesh.logical_axis_rules`` in a run config).
- :mod:`jaxalign.parallel.batch`: how batches are sharded, and per-process rows -> global arrays.
- :mod:`jaxalign.parallel.distributed`: ``jax.distributed`` start-up and cross-process helpers.
"""

from jaxalign.parallel.batch import batch_axes, batch_sharding, batch_shardings, batch_shards, global_batch
from jaxalign.parallel.distributed import initialize_distributed, is_main
from jaxalign.parallel.mesh import MESH_AXES, MeshConfig, make_mesh, mesh_for
from jaxalign.parallel.rules import (DEFAULT_RULES, axis_rules, current_rules, logical_to_spec, make_rules, param_logical_axes,
                                     param_sharding, path_names, shard_model, state_shardings)

__all__ = [
    "DEFAULT_RULES", "MESH_AXES", "axis_rules", "current_rules", "MeshConfig", "batch_axes", "batch_sharding", "batch_shardings", "batch_shards",
    "global_batch", "initialize_distributed", "is_main", "logical_to_spec", "make_mesh", "make_rules", "mesh_for",
    "param_logical_axes", "param_sharding", "path_names", "shard_model", "state_shardings",
]
