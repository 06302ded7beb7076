"""The device mesh: one mesh with axes ``('data', 'fsdp', 'tensor')``, whose shape is the only
thing that differs between a laptop, a GPU box and a TPU pod slice."""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxalign.errors import JaxalignError

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape. ``-1`` on one axis takes the remaining devices (default: all on 'fsdp')."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def shape(self, n_devices: int) -> tuple[int, int, int]:
        dims = [self.data, self.fsdp, self.tensor]
        if dims.count(-1) > 1:
            raise JaxalignError("mesh: at most one of data/fsdp/tensor may be -1")
        known = math.prod(d for d in dims if d != -1)
        if -1 in dims:
            if n_devices % known:
                raise JaxalignError(f"mesh: {n_devices} devices do not divide by {known}")
            dims[dims.index(-1)] = n_devices // known
        if math.prod(dims) != n_devices:
            raise JaxalignError(
                f"mesh: data*fsdp*tensor = {math.prod(dims)} but {n_devices} devices are available"
            )
        return tuple(dims)


def make_mesh(config: MeshConfig | Mapping | Sequence[int] | None = None, devices=None) -> Mesh:
    """Build the ``('data', 'fsdp', 'tensor')`` mesh over ``devices`` (default: all)."""
    devices = list(devices if devices is not None else jax.devices())
    if config is None:
        config = MeshConfig()
    elif isinstance(config, Mapping):
        unknown = set(config) - set(MESH_AXES)
        if unknown:
            raise JaxalignError(f"mesh: unknown axis {sorted(unknown)[0]!r} (axes: {MESH_AXES})")
        config = MeshConfig(**config)
    elif not isinstance(config, MeshConfig):
        config = MeshConfig(*config)
    shape = config.shape(len(devices))
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES)




def mesh_for(data: int = 1, fsdp: int = -1, tensor: int = 1) -> Mesh:
    """A run's mesh: over all devices, or, on one host, over the first ``data*fsdp*tensor``
    devices when no axis is -1 (e.g. ``fsdp=1`` for one device)."""
    dims = {"data": data, "fsdp": fsdp, "tensor": tensor}
    devices = jax.devices()
    n = math.prod(dims.values())
    if -1 not in dims.values() and jax.process_count() == 1 and 0 < n < len(devices):
        devices = devices[:n]
    try:
        return make_mesh(dims, devices)
    except JaxalignError as e:
        if jax.process_count() == 1:
            raise
        raise JaxalignError(f"{e} ({jax.process_count()} processes x {jax.local_device_count()} devices); "
                            "a multi-process run's mesh spans every device of every process") from None
