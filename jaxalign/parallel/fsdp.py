"""The FSDP layout of a mesh for :mod:`jaxalign.models.fsdp`: which mesh axes a named weight is
split over (the logical-axis rules of :mod:`jaxalign.parallel.rules`, read when JAX traces, so a
run's ``mesh.logical_axis_rules`` apply) and which axes split the batch. The models read the
layout; they do not import this layer."""

from __future__ import annotations

from jaxalign.models import fsdp as _fsdp
from jaxalign.parallel.batch import batch_sharding
from jaxalign.parallel.rules import _PARAM_AXES, logical_to_spec


def layout(mesh) -> _fsdp.Layout | None:
    """The layout of ``mesh`` (None for no mesh or one device: nothing to gather)."""
    if mesh is None or mesh.devices.size <= 1:
        return None

    def spec_of(key, shape):
        axes = _PARAM_AXES.get(tuple(key))
        return None if axes is None or len(axes) != len(shape) else logical_to_spec(axes, shape, mesh)

    return _fsdp.Layout(mesh, spec_of, lambda ndim, rows: batch_sharding(mesh, ndim, rows=rows))


def traced_with(fn, mesh):
    """``fn`` traced with each weight gathered where a forward uses it (:mod:`jaxalign.models.fsdp`)."""
    return _fsdp.traced_with(fn, layout(mesh))
