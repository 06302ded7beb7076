"""jaxalign.data: dataset formats -> canonical examples -> token ids -> padded numpy batches.

The pipeline, one function per stage::

    rows = load_dataset_rows("data/train.jsonl")                      # datasets.Dataset / list
    examples, n_skipped = to_examples(rows, "auto", "data/train.jsonl")
    tokenized, n_dropped = tokenize_examples(examples, tokenizer, max_length=512,
                                             max_prompt_length=256, prompt_overflow="truncate_left")
    batches = BatchIterator(tokenized, 8, seed=0, pad_id=tokenizer.pad_token_id, buckets="pow2")

or :func:`prepare_dataset` for the first three. Small shipped datasets and a tiny byte-level
tokenizer (for tests, configs and demos) are found with :func:`shipped_path` and
:func:`tiny_tokenizer_path`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path

from jaxalign.data.batching import (BatchIterator, batch_columns, batch_kind, bucket_length, collate, columns_by_row,
                                    full_batches, train_eval_split, unpaired_widths)
from jaxalign.data.packing import PackedBatchIterator, collate_packed, pack
from jaxalign.data.formats import (
    FORMATS,
    LMExample,
    PreferenceExample,
    PromptCompletionExample,
    PromptExample,
    RankedExample,
    UnpairedExample,
    check_rows,
    detect_format,
    example_format,
    normalize_format,
    to_examples,
)
from jaxalign.data.loading import load_dataset_rows, load_examples
from jaxalign.data.tokenize import (
    Renderer,
    sequence_length,
    tokenize_example,
    tokenize_examples,
    unpair_preference,
)

SHIPPED = ("sft_tiny.jsonl", "preference_tiny.jsonl", "ranked_tiny.jsonl", "prompts_tiny.jsonl",
           "movie_prompts.jsonl", "arith_train.jsonl", "arith_heldout.jsonl")


def shipped_path(name: str = "") -> Path:
    """Path of a shipped file (``"sft_tiny.jsonl"``, ...), or of the shipped folder for ``""``."""
    root = Path(str(importlib.resources.files("jaxalign.data") / "shipped"))
    return root / name if name else root


def tiny_tokenizer_path() -> Path:
    """Directory of the tiny byte-level tokenizer (``AutoTokenizer.from_pretrained(it)`` works
    offline): 260 tokens; ``<|endoftext|>`` 0, ``<|im_start|>`` 1, ``<|im_end|>`` 2 (EOS),
    ``<|pad|>`` 3 (pad), byte ``b`` -> ``b + 4``; ChatML chat template."""
    return shipped_path("tokenizer_tiny")


@dataclasses.dataclass
class DataStats:
    """What :func:`prepare_dataset` kept and why it left rows out: ``skipped`` invalid rows
    (``skip_invalid_rows``), ``dropped`` over-long prompts (``prompt_overflow: drop``),
    ``identical`` preference pairs whose ``rejected`` equals ``chosen`` (always dropped); and how
    many kept examples were cut: ``truncated`` by ``max_length``, ``prompt_truncated`` by
    ``max_prompt_length``."""

    source: str
    format: str
    rows: int
    examples: int
    skipped: int
    dropped: int
    skip_reasons: list
    identical: int = 0
    truncated: int = 0  # examples cut on the right by max_length
    prompt_truncated: int = 0  # prompts cut on the left by max_prompt_length (truncate_left)


def prepare_dataset(source, tokenizer, *, fmt: str = "auto", split: str | None = "train",
                    max_length: int | None = 512, max_prompt_length: int | None = 256,
                    prompt_overflow: str = "truncate_left", skip_invalid_rows: bool = False,
                    prompt_template: str | None = None, add_eos: bool = True, assistant_only_loss: bool = True,
                    completion_only_loss: bool = True, subset: str | None = None, columns: dict | None = None,
                    columns_key: str = "data.columns") -> tuple[list[dict], DataStats]:
    """Load, validate and tokenise a dataset: ``(tokenized_examples, stats)``.

    Keyword arguments mirror the ``data:`` config section; see :func:`load_dataset_rows`,
    :func:`~jaxalign.data.sources.map_columns` (``columns``, named ``columns_key`` in errors),
    :func:`to_examples` and :func:`tokenize_example`. ``stats.skipped`` counts invalid rows (``skip_invalid_rows``; rows
    the chat template cannot render count too),
    ``stats.dropped`` prompts over ``max_prompt_length`` (``prompt_overflow="drop"``),
    ``stats.identical`` preference rows dropped because ``rejected`` equals ``chosen``,
    ``stats.truncated`` / ``stats.prompt_truncated`` examples cut to fit. ``assistant_only_loss``,
    ``completion_only_loss``: which tokens carry the loss, see :func:`tokenize_example`.
    """
    src = str(source)
    from jaxalign.data.sources import map_columns

    rows = map_columns(load_dataset_rows(source, split, subset=subset), columns, src, columns_key)
    examples, reasons = check_rows(rows, fmt, src, skip_invalid_rows)
    identical = len(rows) - len(examples) - len(reasons)  # the only other rows check_rows leaves out
    unrenderable: list[str] = []
    counts: dict = {}
    tokenized, dropped = tokenize_examples(
        examples, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
        prompt_overflow=prompt_overflow, prompt_template=prompt_template, add_eos=add_eos, source=src,
        skipped=unrenderable if skip_invalid_rows else None, assistant_only_loss=assistant_only_loss,
        completion_only_loss=completion_only_loss, counts=counts)
    if unrenderable:
        import logging

        logging.getLogger("jaxalign.data").warning(
            "%s: skipped %d row(s) the chat template cannot render: %s", src, len(unrenderable),
            "; ".join(unrenderable[:5]))
        reasons = list(reasons) + unrenderable
    if not tokenized:
        from jaxalign.errors import JaxalignError

        if unrenderable:
            raise JaxalignError(f"{src}: no example left ({dropped} over-long prompts dropped, "
                                f"{len(unrenderable)} rows skipped); first skipped: {unrenderable[0]}")
        raise JaxalignError(f"{src}: every example was dropped (prompts longer than max_prompt_length="
                            f"{max_prompt_length}; prompt_overflow: drop)")
    stats = DataStats(src, example_format(examples[0]), len(rows), len(tokenized),
                      len(reasons), dropped, reasons[:5], identical, counts.get("truncated", 0),
                      counts.get("prompt_truncated", 0))
    return tokenized, stats


__all__ = [
    "FORMATS", "SHIPPED", "BatchIterator", "DataStats", "LMExample", "PreferenceExample",
    "PromptCompletionExample", "PromptExample", "RankedExample", "Renderer", "batch_columns", "batch_kind",
    "bucket_length", "check_rows", "collate", "columns_by_row", "detect_format", "example_format", "full_batches",
    "load_dataset_rows", "load_examples", "normalize_format", "prepare_dataset", "sequence_length", "shipped_path",
    "tiny_tokenizer_path", "to_examples", "tokenize_example", "tokenize_examples", "train_eval_split",
    "UnpairedExample", "unpair_preference", "unpaired_widths", "PackedBatchIterator", "collate_packed", "pack",
]
