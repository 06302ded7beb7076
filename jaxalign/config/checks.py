"""Value checks of the shared config sections, run by :func:`jaxalign.config.load_config`.

:mod:`jaxalign.config.coerce` checks each value's *type*; this module checks that the value makes
sense (a finite learning rate, a positive batch size, a known schedule, ...), so that a bad
value is a one-line error naming its key before anything is loaded or written, rather than a
traceback or a NaN run minutes later. Each algorithm checks its own section in its
``validate``.
"""

from __future__ import annotations

import dataclasses
import math
import typing

from jaxalign.errors import JaxalignError, short
from jaxalign.models.config import REMAT_MODES, is_remat_mode

_CHOICES = {
    "model.init": ("pretrained", "random"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16", "float16"),
    "data.prompt_overflow": ("truncate_left", "drop", "error"),
    "optim.schedule": ("constant", "cosine", "linear"),
}

# key -> (low, high, low_inclusive, high_inclusive); None: no bound. A None *value* is allowed
# only where the field's type allows it (checked by jaxalign.config already).
_RANGES = {
    "seed": (0, 2**32 - 1, True, True),
    "data.max_length": (2, None, True, True),
    "data.max_prompt_length": (1, None, True, True),
    "data.eval_fraction": (0.0, 1.0, True, False),
    "optim.lr": (0.0, None, True, True),
    "optim.warmup_steps": (0, None, True, True),
    "optim.min_lr_ratio": (0.0, 1.0, True, True),
    "optim.weight_decay": (0.0, None, True, True),
    "optim.b1": (0.0, 1.0, True, False),
    "optim.b2": (0.0, 1.0, True, False),
    "optim.eps": (0.0, None, False, True),
    "optim.grad_clip": (0.0, None, False, True),
    "train.steps": (0, None, False, True),
    "train.epochs": (0.0, None, False, True),
    "train.batch_size": (0, None, False, True),
    "train.micro_batch_size": (0, None, False, True),
    "train.eval_every": (0, None, True, True),
    "train.eval_batches": (0, None, False, True),
    "train.log_every": (0, None, False, True),
    "train.save_every": (0, None, True, True),
    "train.keep_checkpoints": (0, None, False, True),
    "train.max_nonfinite_steps": (0, None, False, True),
    "train.log_samples": (0, None, True, True),
}

# model.config (init: random): the ModelConfig fields that are sizes or ids.
_MODEL_POSITIVE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window",
                   "rms_norm_eps", "rope_theta", "rope_local_theta", "query_pre_attn_scalar",
                   "attn_logit_softcapping", "final_logit_softcapping")
_MODEL_IDS = ("bos_token_id", "pad_token_id")


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _bounds_text(lo, hi, lo_inc, hi_inc) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo_inc else '>'} {lo}")
    if hi is not None:
        parts.append(f"{'<=' if hi_inc else '<'} {hi}")
    return " and ".join(parts)


def check_number(value, key: str, lo=None, hi=None, lo_inclusive: bool = True, hi_inclusive: bool = True):
    """``value`` if it is a finite number within the bounds, else a one-line error naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JaxalignError(f"config key {key!r}: expected a number, got {short(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise JaxalignError(f"config key {key!r}: must be a finite number, got {value}")
    ok = (lo is None or (value >= lo if lo_inclusive else value > lo)) and \
         (hi is None or (value <= hi if hi_inclusive else value < hi))
    if not ok:
        raise JaxalignError(f"config key {key!r}: must be {_bounds_text(lo, hi, lo_inclusive, hi_inclusive)}, "
                            f"got {value}")
    return value


def check_ranges(obj, ranges: dict, prefix: str = "") -> None:
    """Check each attribute named in ``ranges`` (``name -> (lo, hi, lo_inclusive, hi_inclusive)``,
    a bound None for none) with :func:`check_number`, the error naming ``prefix + name``; a None
    value is skipped (the field's type allows it). For config-like sections outside
    :class:`jaxalign.config.RunConfig`: ``ape:``, the digits example's settings."""
    for name, (lo, hi, lo_inc, hi_inc) in ranges.items():
        value = getattr(obj, name)
        if value is not None:
            check_number(value, prefix + name, lo, hi, lo_inc, hi_inc)


def positive(*names: str) -> dict:
    """``ranges`` entries for :func:`check_ranges`: each name must be >= 1."""
    return {n: (1, None, True, True) for n in names}


def _check_buckets(buckets) -> None:
    if buckets is None or buckets == "pow2":
        return
    if isinstance(buckets, str):
        raise JaxalignError(f"config key 'data.buckets': expected 'pow2', a list of lengths or null, got {short(buckets)}")
    if not buckets:
        raise JaxalignError("config key 'data.buckets': an empty list; give lengths, 'pow2' or null")
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise JaxalignError(f"config key 'data.buckets': expected positive integer lengths, got {short(b)}")


def _check_sources(d) -> None:
    """``data.train`` / ``data.eval`` (a source or a list, with weights), ``data.subset`` and
    ``data.columns`` are well formed; whether the files and splits exist is found at load."""
    from jaxalign.data.sources import check_columns, parse_sources

    if d.subset is not None and not d.subset.strip():
        raise JaxalignError("config key 'data.subset': an empty name; leave it out for the dataset's default")
    check_columns(d.columns, "data.columns")
    for key in ("train", "eval"):
        value = getattr(d, key)
        if value is not None and value != "":
            parse_sources(value, f"data.{key}", d.subset, d.columns)


def _check_model_config(fields: dict) -> None:
    """Check ``model.config`` against ModelConfig's fields and store each value as coerced
    (YAML 1.1 reads ``rms_norm_eps: 1e-5`` as a string; the model must get a float)."""
    from jaxalign.config.coerce import coerce as _coerce
    from jaxalign.models.config import ModelConfig

    hints = typing.get_type_hints(ModelConfig)
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    for k, v in fields.items():
        key = f"model.config.{k}"
        if k not in names:
            import difflib

            near = difflib.get_close_matches(str(k), sorted(names), n=1, cutoff=0.6)
            hint = f"; did you mean 'model.config.{near[0]}'?" if near else ""
            # Always in single quotes (repr would switch to double quotes for a key holding one).
            raise JaxalignError(f"unknown config key '{repr(key)[1:-1]}'{hint}")
        if k in ("dtype", "param_dtype"):
            raise JaxalignError(f"config key {key!r}: set model.{k} instead")
        v = fields[k] = _coerce(v, hints[k], key)
        if v is None:
            continue
        if k in _MODEL_POSITIVE:
            check_number(v, key, 0, None, False)
        elif k in _MODEL_IDS:
            check_number(v, key, 0)
        elif k == "eos_token_id":
            for i in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                    raise JaxalignError(f"config key {key!r}: expected token ids >= 0, got {short(v)}")


# The offline algorithms whose losses read segment ids (jaxalign.data.packing).
PACKED_ALGORITHMS = ("sft", "rm", "dpo")


def check_values(cfg) -> None:
    """Raise a one-line :class:`JaxalignError` naming the first out-of-range key of ``cfg``
    (a :class:`jaxalign.config.RunConfig`)."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise JaxalignError(f"config key {key!r}: {short(value)} is not one of {', '.join(choices)}")
    if not is_remat_mode(cfg.model.remat):
        names = ", ".join(str(m).lower() for m in REMAT_MODES)  # as YAML writes them
        raise JaxalignError(f"config key 'model.remat': {short(cfg.model.remat)} is not one of {names}")
    if cfg.model.init == "random" and cfg.model.path is not None:
        # A random model never reads model.path: the run would train from scratch, exit 0, and
        # look like a fine-tune of the model named there.
        raise JaxalignError(f"config key 'model.path': {short(cfg.model.path)} is set but 'model.init' is 'random', "
                            "which ignores it; set model.init=pretrained to load it, or remove model.path "
                            "(model.tokenizer names a tokenizer)")
    for key, (lo, hi, lo_inc, hi_inc) in _RANGES.items():
        value = _get(cfg, key)
        if value is not None:
            check_number(value, key, lo, hi, lo_inc, hi_inc)
    d = cfg.data
    if d.max_prompt_length >= d.max_length:
        raise JaxalignError(f"config key 'data.max_prompt_length': {d.max_prompt_length} must be smaller than "
                            f"data.max_length={d.max_length} (room for the completion)")
    from jaxalign.data.formats import normalize_format

    try:
        normalize_format(d.format)
    except JaxalignError as e:
        raise JaxalignError(f"config key 'data.format': {e}") from None
    _check_buckets(d.buckets)
    if d.packing and cfg.algorithm not in PACKED_ALGORITHMS:
        raise JaxalignError(f"config key 'data.packing': packed batches are for {', '.join(PACKED_ALGORITHMS)}, "
                            f"not {cfg.algorithm}; set data.packing=false")
    _check_sources(d)
    t = cfg.train
    if t.micro_batch_size is not None and t.batch_size % t.micro_batch_size:
        raise JaxalignError(f"config key 'train.micro_batch_size': {t.micro_batch_size} does not divide "
                            f"train.batch_size={t.batch_size}")
    for axis in ("data", "fsdp", "tensor"):
        n = getattr(cfg.mesh, axis)
        if n != -1 and n < 1:
            raise JaxalignError(f"config key 'mesh.{axis}': expected -1 (all remaining devices) or >= 1, got {n}")
    if [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor].count(-1) > 1:
        raise JaxalignError("config key 'mesh': at most one of data/fsdp/tensor may be -1")
    if cfg.mesh.logical_axis_rules is not None:
        from jaxalign.parallel.rules import make_rules

        make_rules(cfg.mesh.logical_axis_rules)  # names every unknown axis
    if cfg.model.config is not None:
        _check_model_config(cfg.model.config)
    from jaxalign.config.report_to import parse_report_to

    parse_report_to(t.report_to)  # a backend that is not installed is refused here, before any loading
