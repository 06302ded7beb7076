"""Hugging Face model directories (``config.json`` + ``*.safetensors``), both directions."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jaxalign.errors import JaxalignError
from jaxalign.io.params import iter_hf_tensors, load_causal_lm
from jaxalign.models.config import ModelConfig, dtype_overrides
from jaxalign.models.llama import CausalLM

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
INDEX_NAME = "model.safetensors.index.json"
# Weight files in Python's pickle format (PyTorch, joblib, ...), which jaxalign never opens.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")


class SafetensorsSource:
    """Tensor source over the safetensors files of a HF dir; reads slices lazily (mmap)."""

    def __init__(self, model_dir: Path):
        model_dir = Path(model_dir)
        index = model_dir / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise JaxalignError(f"{index}: not a valid safetensors index ({e})") from None
            if not isinstance(weight_map, dict):
                raise JaxalignError(f"{index}: not a valid safetensors index ('weight_map' is not a mapping)")
            files = sorted(set(map(str, weight_map.values())))
            other = [f for f in files if not f.endswith(".safetensors")]
            if other:
                raise JaxalignError(f"{index}: lists {other[0]!r}; jaxalign reads only *.safetensors weights")
        else:
            files = sorted(p.name for p in model_dir.glob("*.safetensors"))
        if not files:
            pickled = sorted(p.name for p in model_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
            if pickled:
                shown = ", ".join(pickled[:3]) + (", ..." if len(pickled) > 3 else "")
                raise JaxalignError(
                    f"{model_dir}: only pickle weights ({shown}) and no *.safetensors; jaxalign never unpickles "
                    "(loading a pickle can run code): convert them to safetensors with transformers "
                    "(save_pretrained(safe_serialization=True)) or use a GGUF file"
                )
            raise JaxalignError(f"{model_dir}: no *.safetensors weights found")
        self._handles, self._where = {}, {}
        for fname in files:
            path = model_dir / fname
            try:
                h = safe_open(str(path), framework="numpy")
                keys = list(h.keys())
            except FileNotFoundError:
                raise JaxalignError(f"{path}: listed in {INDEX_NAME} but missing") from None
            except (SafetensorError, OSError, ValueError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise JaxalignError(f"{path}: unreadable safetensors file (truncated or corrupt: {msg})") from None
            self._handles[fname] = h
            for k in keys:
                self._where[k] = fname
        self.model_dir = model_dir

    def names(self):
        return self._where.keys()

    def shape(self, name):
        return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

    def file_of(self, name) -> str:
        """The safetensors file holding tensor ``name`` (for error messages)."""
        return str(self.model_dir / self._where[name])

    def read(self, name, index=()):
        sl = self._handles[self._where[name]].get_slice(name)
        try:
            return np.asarray(sl[index] if index else sl[:])
        except Exception as e:  # safetensors raises plain Exceptions for short reads
            raise JaxalignError(f"{self.model_dir / self._where[name]}: cannot read {name!r} ({e})") from None


def read_config(model_dir: str | Path, **overrides) -> ModelConfig:
    """ModelConfig from ``model_dir/config.json`` with a one-line error when it is absent."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise JaxalignError(f"{model_dir}: not a directory")
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise JaxalignError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
    config = ModelConfig.from_json(cfg_path, **overrides)
    _note_custom_code(cfg_path)
    return config


def _note_custom_code(cfg_path: Path) -> None:
    """Say that a config's ``auto_map`` (custom Python code shipped with the model) is ignored:
    jaxalign runs its own implementation of the (supported) architecture, never the model's code."""
    try:
        auto_map = json.loads(cfg_path.read_text()).get("auto_map")
    except (ValueError, AttributeError, OSError):
        return
    if auto_map:
        import logging

        logging.getLogger("jaxalign.io").warning(
            "%s: ignoring 'auto_map' (the model's own Python code); jaxalign never runs code from a model "
            "directory and loads it with its built-in implementation of the architecture", cfg_path)


def load_hf(model_dir: str | Path, dtype: str | None = None, mesh=None, rules=None,
            scalar_head: bool = False, compute_dtype: str | None = None):
    """Load a HF causal-LM directory into a :class:`~jaxalign.models.llama.CausalLM`.

    ``dtype`` sets both parameter and compute dtype (default: float32). With a ``mesh`` each
    parameter is created directly on its sharding. ``scalar_head=True`` loads a
    ``*ForSequenceClassification`` directory (one label) as a
    :class:`~jaxalign.models.heads.ScalarHeadModel`. ``model_dir`` may also be a Hub id
    (``org/name[@revision]``, see :func:`jaxalign.io.paths.resolve_model_path`).
    """
    from jaxalign.io.paths import resolve_model_path

    model_dir = resolve_model_path(model_dir)
    config = read_config(model_dir, **dtype_overrides(dtype, compute_dtype))
    cls = CausalLM
    if scalar_head:
        from jaxalign.models.heads import ScalarHeadModel

        # A sequence-classification export has no LM head; the backbone keeps a tied one.
        config = config.replace(tie_word_embeddings=True)
        cls = ScalarHeadModel
    return load_causal_lm(config, SafetensorsSource(Path(model_dir)), str(model_dir), mesh, rules, cls)


def save_hf(model, out_dir: str | Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
            extra_tensors=(), architecture: str | None = None, extra_config: dict | None = None) -> Path:
    """Write ``model`` as a HF directory that ``transformers`` loads.

    A :class:`~jaxalign.models.heads.ScalarHeadModel` is written as
    ``<Family>ForSequenceClassification`` with one label (its LM head is left out).

    Files go to a temporary sibling directory first and are moved in only when complete, so a
    crash never leaves a half-written model behind. Past ``max_shard_bytes`` the weights are
    split into ``model-0000i-of-0000n.safetensors`` with an index file.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shards, current, size = [], {}, 0
        is_head = hasattr(model, "score") and hasattr(model, "backbone")
        if is_head:
            architecture = architecture or model.config.architecture.replace(
                "ForCausalLM", "ForSequenceClassification")
            extra_config = {"num_labels": 1, **(extra_config or {})}
        tensors = list(iter_hf_tensors(model, skip=("lm_head",) if is_head else ())) + list(extra_tensors)
        for name, arr in tensors:
            if current and size + arr.nbytes > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[name] = arr
            size += arr.nbytes
        shards.append(current)
        n = len(shards)
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            save_file(shard, str(tmp / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
        if n > 1:
            total = sum(a.nbytes for _, a in tensors)
            (tmp / INDEX_NAME).write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
            )
        cfg = model.config.to_hf_dict(architecture)
        cfg.update(extra_config or {})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        out_dir.mkdir(exist_ok=True)
        # Stale shards of an earlier export would confuse loaders: remove them first.
        for old in list(out_dir.glob("model*.safetensors")) + list(out_dir.glob(INDEX_NAME)):
            old.unlink()
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
