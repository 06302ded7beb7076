"""Hugging Face tensor names <-> nnx parameter paths, and building a model from a tensor source.

A *tensor source* is anything with ``names()``, ``shape(name)`` and ``read(name, index)``
(a numpy slice of one tensor). Safetensors files and GGUF files both provide one, so every
format shares one loader, and a sharded load reads only each device's slice.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping, Protocol

import flax.nnx as nnx
import jax
import numpy as np

from jaxalign import parallel as shd
from jaxalign.errors import JaxalignError
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import CausalLM

# HF checkpoints carry these non-parameters in some versions; they are safe to ignore.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class TensorSource(Protocol):
    def names(self) -> Iterable[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, index: tuple = ()) -> np.ndarray: ...


class DictSource:
    """A tensor source over in-memory numpy arrays (e.g. a dequantised GGUF)."""

    def __init__(self, tensors: Mapping[str, np.ndarray]):
        self._t = dict(tensors)

    def names(self):
        return self._t.keys()

    def shape(self, name):
        return tuple(self._t[name].shape)

    def read(self, name, index=()):
        return np.asarray(self._t[name][index])


def _strip_backbone(path: tuple[str, ...]) -> tuple[str, ...]:
    # A ScalarHeadModel's backbone is HF's ``model.``; its head is HF's top-level ``score``.
    return path[1:] if path[0] == "backbone" else path


def is_stacked(path: tuple[str, ...]) -> bool:
    """Whether a parameter lives in the scanned decoder stack (leading ``layers`` axis)."""
    return _strip_backbone(path)[0] == "layers"


def hf_name(path: tuple[str, ...], layer: int | None = None) -> str:
    """HF tensor name of a parameter path; ``layer`` fills in the stacked-layer index."""
    path = _strip_backbone(path)
    if path[0] == "layers":
        return f"model.layers.{layer}." + ".".join(path[1:])
    if path[0] in ("lm_head", "score"):
        return ".".join(path)
    return "model." + ".".join(path)


def _normalise_names(names: Iterable[str]) -> dict[str, str]:
    """Map canonical names (``model.`` prefix) to the names actually stored (some omit it)."""
    out = {}
    for n in names:
        if n.endswith(_IGNORED_SUFFIXES):
            continue
        canon = n if n.startswith(("model.", "lm_head.", "score.")) else "model." + n
        out[canon] = n
    return out


def check_weight(arr: np.ndarray, name: str, where: str) -> np.ndarray:
    """``arr`` if it is a floating-point array of finite values, else a one-line error naming the
    tensor and its file.

    ``astype`` would turn integers (a quantised export, a mislabelled tensor) into
    plausible-looking float weights without a word, and a NaN/Inf would surface only as a NaN
    loss or at the first checkpoint save; one ``isfinite`` pass over the host array as it is
    read is cheap next to reading it.
    """
    if not jax.numpy.issubdtype(arr.dtype, jax.numpy.floating):
        raise JaxalignError(f"{where}: tensor {name!r} has dtype {arr.dtype}, expected floating-point weights "
                            "(jaxalign does not cast integer or boolean tensors to float)")
    if not np.isfinite(arr).all():
        has_nan, has_inf = bool(np.isnan(arr).any()), bool(np.isinf(arr).any())
        what = " and ".join(k for k, v in (("NaN", has_nan), ("Inf", has_inf)) if v)
        raise JaxalignError(f"{where}: tensor {name!r} holds {what} values; refusing non-finite weights "
                            "(a damaged or badly converted file)")
    return arr


def _param_paths(state) -> list[tuple[tuple[str, ...], jax.ShapeDtypeStruct]]:
    return [
        (shd.path_names(p), leaf)
        for p, leaf in jax.tree_util.tree_leaves_with_path(state)
    ]


def build_state(abstract_state, num_layers: int, source: TensorSource, source_name: str,
                mesh=None, rules=None, allow_missing: Callable[[str], bool] = lambda n: False):
    """Fill an abstract ``nnx.State`` from ``source``, placing each array on its sharding.

    Every device receives only its own slice (``jax.make_array_from_callback``), so a sharded
    load never holds the whole model on one device. Each slice read is checked
    (:func:`check_weight`); a source with ``file_of(name)`` names the file in those errors.
    """
    stored = _normalise_names(source.names())
    used = set()
    # The file a tensor is in (a sharded HF dir has several), for errors about its values.
    where = getattr(source, "file_of", lambda _name: source_name)

    def place(path, leaf):
        shape, dtype = leaf.shape, leaf.dtype
        stacked = is_stacked(path)
        names = [hf_name(path, i) for i in range(num_layers)] if stacked else [hf_name(path)]
        for n in names:
            if n not in stored:
                raise JaxalignError(f"{source_name}: missing tensor {n!r}")
            want = shape[1:] if stacked else shape
            got = source.shape(stored[n])
            if tuple(got) != tuple(want):
                raise JaxalignError(
                    f"{source_name}: tensor {n!r} has shape {tuple(got)}, config expects {tuple(want)}"
                )
            used.add(n)
        np_dtype = np.dtype(dtype)

        def one(i, index):
            n = stored[names[i]]
            return check_weight(source.read(n, index), names[i], where(n))

        def read(index):
            index = tuple(index) + (slice(None),) * (len(shape) - len(index))
            if not stacked:
                return one(0, index).astype(np_dtype)
            layers = range(num_layers)[index[0]]
            return np.stack([one(i, index[1:]) for i in layers]).astype(np_dtype)

        if mesh is None:
            return jax.device_put(read(()))
        sharding = shd.param_sharding(path, shape, mesh, rules)
        return jax.make_array_from_callback(shape, sharding, read)

    state = jax.tree_util.tree_map_with_path(lambda p, x: place(shd.path_names(p), x), abstract_state)
    return state, set(stored) - used


def load_causal_lm(config: ModelConfig, source: TensorSource, source_name: str, mesh=None,
                   rules=None, cls=CausalLM):
    """Instantiate ``cls`` (a CausalLM or a ScalarHeadModel) from a tensor source, without ever
    materialising random weights."""
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    state, _unused = build_state(abstract_state, config.num_hidden_layers, source, source_name,
                                 mesh=mesh, rules=rules)
    return nnx.merge(graphdef, state)


def iter_hf_tensors(model, skip=()) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy array) for every parameter of ``model``, stacked layers unrolled.

    ``skip``: top-level HF names to leave out (e.g. ``lm_head`` of a reward model).
    """
    state = nnx.state(model, nnx.Param)
    for path, leaf in _param_paths(state):
        if hf_name(path, 0).split(".")[0] in skip:
            continue
        arr = np.asarray(jax.device_get(leaf))
        if is_stacked(path):
            for i in range(arr.shape[0]):
                yield hf_name(path, i), np.ascontiguousarray(arr[i])
        else:
            yield hf_name(path), arr


def cast_state(model, dtype) -> None:
    """Cast every parameter of ``model`` to ``dtype`` in place."""
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x.astype(dtype), state))


