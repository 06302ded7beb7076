"""Abstract builds for memory planning (``jaxalign plan``): while :func:`abstract_build` is
active, the code that would create or load parameters builds them as ``jax.ShapeDtypeStruct``
leaves instead (shape, dtype and sharding, no buffer), and the experience phase records what it
would sample instead of sampling. The planner (:mod:`jaxalign.algorithms.plan`) then lowers and
compiles the jitted functions on those shapes: nothing the size of a model is ever allocated.

This module only holds the switch and the record, so the low layers (models, rewards) can ask
:func:`active` without importing the planner.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any

import jax

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("jaxalign_abstract_build", default=None)


@dataclasses.dataclass
class Record:
    """What an abstract build saw: the experience makers asked to sample (with the policy and
    the prompt batch shape they were given), for the planner to compile."""

    samplings: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def abstract_build():
    """Within the block, parameters are built abstractly (see the module docstring); yields the
    :class:`Record`."""
    record = Record()
    token = _ACTIVE.set(record)
    try:
        yield record
    finally:
        _ACTIVE.reset(token)


def active() -> Record | None:
    """The record of the abstract build in progress, else None (a real build)."""
    return _ACTIVE.get()


def is_abstract(tree: Any) -> bool:
    """Whether ``tree`` has a ``ShapeDtypeStruct`` leaf (built abstractly)."""
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def with_shardings(tree: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` leaves of ``tree`` carrying ``shardings`` (a matching tree)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
