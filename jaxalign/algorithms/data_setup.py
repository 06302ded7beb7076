"""What every algorithm reads: its datasets (sources, weighted mixtures, held-out split,
length warnings) and the resumable batch iterators over them, padded or packed."""

from __future__ import annotations

import math
from pathlib import Path

import jax

from jaxalign import errors
from jaxalign.algorithms.common import say
from jaxalign.config import RunConfig
from jaxalign.errors import JaxalignError


def data_source(source: str) -> str:
    """``shipped:NAME`` is a dataset shipped with jaxalign (``shipped:sft_tiny.jsonl``)."""
    if source.startswith("shipped:"):
        from jaxalign.data import SHIPPED, shipped_path

        name = source.split(":", 1)[1]
        if name not in SHIPPED:
            raise JaxalignError(f"{source}: no such shipped dataset (shipped: {', '.join(SHIPPED)})")
        return str(shipped_path(name))
    return source


def _load_one(cfg: RunConfig, tokenizer, src) -> list:
    """Tokenized examples of one :class:`~jaxalign.data.sources.Source`."""
    from jaxalign.data import prepare_dataset

    source = data_source(src.path)
    d = cfg.data
    # data.subset names a config of the dataset sources; a single file in the same list has none.
    subset = None if not src.own_subset and Path(source).expanduser().is_file() else src.subset
    tokenized, stats = prepare_dataset(
        source, tokenizer, fmt=d.format, split=src.split, subset=subset, columns=src.columns,
        columns_key=src.columns_key, max_length=d.max_length, max_prompt_length=d.max_prompt_length,
        prompt_overflow=d.prompt_overflow, skip_invalid_rows=d.skip_invalid_rows,
        # Only SFT has the switches; other algorithms that train on such rows (IFT) keep TRL's defaults.
        assistant_only_loss=getattr(cfg.algo, "assistant_only_loss", True),
        completion_only_loss=getattr(cfg.algo, "completion_only_loss", True))
    extra = [f"{n} {what}" for n, what in ((stats.skipped, "invalid rows skipped"),
                                          (stats.dropped, "over-long prompts dropped"),
                                          (getattr(stats, "identical", 0), "identical pairs dropped")) if n]
    shown = f"{source}:{src.split}" if src.split else source
    say(cfg, f"{src.key}: {shown}: {stats.examples} {stats.format} examples"
             + (f" ({', '.join(extra)})" if extra else ""))
    warning = length_warning(cfg, stats, src.key.split(".")[-1])
    if warning:
        warn(warning)  # even with --quiet: a cut or dropped row changes what the model is trained on
    return tokenized


def warn(msg: str) -> None:
    """:func:`jaxalign.errors.warn` on process 0 only."""
    if jax.process_index() == 0:
        errors.warn(msg)


def length_warning(cfg: RunConfig, stats, split: str) -> str | None:
    """One line saying how many of ``split``'s rows ``data.max_length`` / ``data.max_prompt_length``
    cut and ``prompt_overflow: drop`` dropped (``stats``: a :class:`jaxalign.data.DataStats`), or
    None when none were."""
    d, n = cfg.data, stats.rows
    parts = []
    if stats.truncated:
        parts.append(f"data.max_length={d.max_length} truncated {stats.truncated} of {n} {split} rows "
                     f"({100.0 * stats.truncated / max(n, 1):.1f}%)")
    if stats.prompt_truncated:
        parts.append(f"data.max_prompt_length={d.max_prompt_length} cut the start of {stats.prompt_truncated} "
                     f"of {n} {split} prompts ({100.0 * stats.prompt_truncated / max(n, 1):.1f}%; "
                     f"data.prompt_overflow={d.prompt_overflow})")
    if stats.dropped:
        parts.append(f"data.prompt_overflow={d.prompt_overflow} dropped {stats.dropped} of {n} {split} rows "
                     f"(prompts over data.max_prompt_length={d.max_prompt_length})")
    return "; ".join(parts) or None


def _load_groups(cfg: RunConfig, tokenizer, value, key: str) -> list[tuple[list, object]]:
    """``[(tokenized examples, Source)]`` for each source of ``value`` (a path, a mapping or a list,
    see :mod:`jaxalign.data.sources`), all of one batch kind."""
    from jaxalign.data import batch_kind
    from jaxalign.data.sources import parse_sources

    # data.subset / data.columns describe the data.* sources, not other data sets (ppo.ptx_data).
    inherit = key.startswith("data.")
    sources = parse_sources(value, key, cfg.data.subset if inherit else None, cfg.data.columns if inherit else None)
    groups = [(_load_one(cfg, tokenizer, src), src) for src in sources]
    first_kind = batch_kind(groups[0][0][0])
    for examples, src in groups[1:]:
        if batch_kind(examples[0]) != first_kind:
            raise JaxalignError(f"config key {src.key!r}: {src.path} holds {batch_kind(examples[0])!r} data, but "
                                f"{sources[0].key} ({sources[0].path}) holds {first_kind!r}; the sources of "
                                f"{key} must hold one kind of data")
    return groups


def _mix(cfg: RunConfig, groups: list[tuple[list, object]], key: str) -> list:
    """The sources' examples, each repeated by its weight (:func:`jaxalign.data.sources.weighted`)."""
    from jaxalign.data.sources import weighted

    out = weighted([g for g, _ in groups], [src.weight for _, src in groups], cfg.seed)
    if len(groups) > 1 or groups[0][1].weight != 1:
        counts = [int(math.floor(src.weight)) * len(g) + int(round((src.weight % 1) * len(g))) for g, src in groups]
        for n, (g, src) in zip(counts, groups):
            if n == 0:
                raise JaxalignError(f"config key '{src.key}.weight': {src.weight:g} of {len(g)} examples "
                                    f"({src.path}) keeps none of them; raise the weight or remove the source")
        say(cfg, f"{key}: {len(out)} examples from {len(groups)} source(s): "
                 + ", ".join(f"{src.path} x{src.weight:g} = {n}" for n, (_, src) in zip(counts, groups)))
        out = _renumber(out)
    return out


def _renumber(examples: list) -> list:
    """Examples with ``row`` ids 0..n-1: a prompt's other columns are looked up by ``row``
    (:func:`jaxalign.data.columns_by_row`), and in a mixture two sources both have a row 0."""
    return [dict(e, row=i) if "row" in e else e for i, e in enumerate(examples)]


def _load(cfg: RunConfig, tokenizer, value, key: str) -> list:
    """Tokenized examples of ``value`` (one source or a weighted list of them), named ``key``."""
    return _mix(cfg, _load_groups(cfg, tokenizer, value, key), key)


def datasets_from(cfg: RunConfig, tokenizer, kinds: tuple[str, ...], convert=None) -> tuple[list, list]:
    """(train, eval) tokenized examples from ``data.train`` / ``data.eval`` (or ``data.eval_fraction``).

    ``kinds``: the batch kinds (``"sft"``, ``"preference"``, ``"ranked"``, ``"unpaired"``) this
    algorithm trains on. ``convert``: applied to the train and the eval examples last (after the
    ``eval_fraction`` split, so the rows of one source row stay on one side), turning every
    kind of ``kinds`` into the one the algorithm batches (KTO splits preference pairs into
    unpaired rows); with it, ``data.eval`` may hold any of ``kinds``, not only ``data.train``'s.
    Weighted sources are held out before they are repeated, so no copy of an eval row trains.
    """
    from jaxalign.data import batch_kind, train_eval_split
    from jaxalign.data.sources import describe

    if not cfg.data.train:
        raise JaxalignError("config key 'data.train': required (a JSONL/JSON/Parquet/CSV file, a dataset "
                            "directory, a Hub dataset name, or a list of them)")
    groups = _load_groups(cfg, tokenizer, cfg.data.train, "data.train")
    kind = batch_kind(groups[0][0][0])
    train_name = describe(cfg.data.train)
    if kind not in kinds:
        raise JaxalignError(f"config key 'data.train': {train_name} holds {kind!r} data, but "
                            f"{cfg.algorithm} trains on {' or '.join(repr(k) for k in kinds)} data")
    if cfg.data.eval:
        ev = _load(cfg, tokenizer, cfg.data.eval, "data.eval")
        eval_name = describe(cfg.data.eval)
        if convert is not None and batch_kind(ev[0]) not in kinds:
            raise JaxalignError(f"config key 'data.eval': {eval_name} holds {batch_kind(ev[0])!r} data, but "
                                f"{cfg.algorithm} trains on {' or '.join(repr(k) for k in kinds)} data")
        if convert is None and batch_kind(ev[0]) != kind:
            raise JaxalignError(f"config key 'data.eval': {eval_name} holds {batch_kind(ev[0])!r} "
                                f"data, but data.train holds {kind!r}")
        train = _mix(cfg, groups, "data.train")
    elif cfg.data.eval_fraction:
        # Hold out from the sources' rows as loaded (tagged with their source), then weight the rest.
        tagged = [(i, e) for i, (examples, _) in enumerate(groups) for e in examples]
        rest, held = train_eval_split(tagged, cfg.data.eval_fraction, cfg.seed)
        ev = [e for _, e in held]
        ev = _renumber(ev) if len(groups) > 1 else ev
        train = _mix(cfg, [([e for j, e in rest if j == i], src) for i, (_, src) in enumerate(groups)], "data.train")
    else:
        train, ev = _mix(cfg, groups, "data.train"), []
    if convert is not None:
        train, ev = convert(train), convert(ev)
    return train, ev


def batch_iterators(cfg: RunConfig, train: list, ev: list, pad_id: int):
    """(resumable training iterator, ``eval_batches()`` or None) for the ``train:``/``data:`` settings."""
    from jaxalign.data import BatchIterator

    bs = cfg.train.batch_size
    if cfg.data.packing:
        return packed_iterators(cfg, train, ev, pad_id)
    if len(train) < bs:
        raise JaxalignError(f"config key 'train.batch_size': {bs} is larger than the {len(train)} "
                            "training examples")
    it = BatchIterator(train, bs, seed=cfg.seed, shuffle=True, drop_last=True, pad_id=pad_id,
                       buckets=cfg.data.buckets, max_length=cfg.data.max_length,
                       process_index=jax.process_index(), process_count=jax.process_count())
    eval_fn = None
    if ev:
        # Eval runs one micro-batch at a time (no gradients, so no accumulation needed).
        ebs = min(cfg.train.micro_batch_size or bs, len(ev))

        def eval_fn():
            return BatchIterator(ev, ebs, shuffle=False, drop_last=False, pad_id=pad_id,
                                 buckets=cfg.data.buckets, max_length=cfg.data.max_length,
                                 process_index=jax.process_index(), process_count=jax.process_count(),
                                 num_epochs=1)
    return it, eval_fn


def packed_iterators(cfg: RunConfig, train: list, ev: list, pad_id: int):
    """:func:`batch_iterators` with ``data.packing``: batches of ``train.batch_size`` packed rows
    (eval: ``train.micro_batch_size`` rows, each eval example once)."""
    from jaxalign.data.packing import PackedBatchIterator

    bs = cfg.train.batch_size
    kw = dict(pad_id=pad_id, buckets=cfg.data.buckets, max_length=cfg.data.max_length,
              process_index=jax.process_index(), process_count=jax.process_count())
    it = PackedBatchIterator(train, bs, seed=cfg.seed, shuffle=True, drop_last=True, **kw)
    eval_fn = None
    if ev:
        ebs = cfg.train.micro_batch_size or bs

        def eval_fn():
            return PackedBatchIterator(ev, ebs, shuffle=False, drop_last=False, num_epochs=1, **kw)
    return it, eval_fn


def real_tokens(batch: dict) -> int:
    """The real tokens of every sequence in the batch, as unpacked (a packed pair's shared
    prompt, ``shared_length``, counts once for each of its two sequences)."""
    import numpy as np

    n = sum(np.sum(v) for k, v in batch.items() if k.endswith("attention_mask"))
    return int(n + np.sum(batch.get("shared_length", 0)))
