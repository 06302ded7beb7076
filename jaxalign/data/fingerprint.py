"""A content digest of tokenized examples: the run identity's data fingerprint
(:meth:`jaxalign.data.BatchIterator.fingerprint`, checked on resume by
:mod:`jaxalign.train.identity`)."""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np


def examples_fingerprint(examples: Iterable) -> str:
    """16 hex digits of SHA-256 over every example's fields, in order, structure included: the
    same tokenized data gives the same digest; a swapped field or one changed token does not."""
    h = hashlib.sha256()
    for e in examples:
        _feed(h, e)
    return h.hexdigest()[:16]


def _feed(h, x) -> None:
    """Feed ``x`` (nested dicts, sequences, arrays, scalars) into hash ``h``, structure included."""
    if isinstance(x, dict):
        h.update(b"{")
        for k in sorted(x, key=str):
            h.update(repr(k).encode() + b":")
            _feed(h, x[k])
        h.update(b"}")
    elif isinstance(x, np.ndarray):
        h.update(f"a{x.dtype.str}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    elif isinstance(x, (list, tuple)):
        if x and all(type(v) is int for v in x):  # token ids: one array, not one repr per token
            h.update(f"i{len(x)}".encode())
            h.update(np.asarray(x, np.int64).tobytes())
            return
        h.update(b"[")
        for v in x:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(f"{type(x).__name__}:{x!r};".encode())
