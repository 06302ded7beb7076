"""Collation (padding to buckets, masks from lengths) and a deterministic, resumable batch iterator.

Training batches are right-padded; prompt batches for generation are left-padded. Every mask
comes from the sequences' lengths, never from token values, so ``pad_id == eos_id`` cannot hide
a real EOS. Sequence lengths are rounded up to a bucket so that shapes repeat and a jitted step
compiles once per bucket.

Batch dicts (numpy; ids and masks int32):

- SFT / LM: ``input_ids``, ``attention_mask``, ``completion_mask`` ``[B, S]``;
- preference: ``chosen_input_ids``, ``chosen_attention_mask``, ``chosen_completion_mask``,
  ``rejected_input_ids``, ``rejected_attention_mask``, ``rejected_completion_mask`` ``[B, S]``
  (one S for both), ``margin [B]`` float32 when the data has margins, and any other per-example
  float field (e.g. ``ref_chosen_logp``) as a float32 ``[B]`` array;
- ranked: ``input_ids``, ``attention_mask``, ``completion_mask`` ``[B, K, S]`` (best first) and
  ``rank_valid [B, K]`` (0 for the padding responses of rows with fewer than K);
- prompt-only: ``prompt_ids``, ``prompt_mask`` ``[B, S]``, LEFT-padded; and ``row`` ``[B]`` (the
  examples' source rows) when the examples carry other ``columns``, so that whoever holds the
  dataset (:func:`columns_by_row`) can look them up: batches stay arrays.
- unpaired (KTO): ``prompt_input_ids``, ``prompt_attention_mask`` ``[B, Sp]`` LEFT-padded,
  ``completion_input_ids``, ``completion_attention_mask`` ``[B, Sc]`` right-padded, and
  ``label [B]`` int32 (1: desirable). ``concat([prompt, completion], axis=1)`` is each row's
  sequence with its real tokens contiguous (positions come from the mask), and pairing prompt i
  with completion j is a shift of the completion rows, with no re-padding.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxalign.data.fingerprint import examples_fingerprint
from jaxalign.data.tokenize import sequence_length
from jaxalign.errors import JaxalignError

_MIN_POW2 = 16


def bucket_length(n: int, buckets=None, max_length: int | None = None, beyond: str = "error") -> int:
    """The padded length for a longest sequence of ``n`` tokens (the one bucketing rule of
    training batches and of the sampler's prompts).

    ``buckets``: None or empty (exactly ``n``), ``"pow2"`` (the next power of two >= 16, capped at
    ``max_length``), or a list of lengths (the smallest >= n). Longer than every listed length:
    an error (``beyond="error"``, training data) or the next multiple of the largest
    (``beyond="multiple"``, the sampler's prompts, which are never refused).
    """
    if buckets is None or (not isinstance(buckets, str) and len(buckets) == 0):
        return n
    if isinstance(buckets, str):
        if buckets != "pow2":
            raise JaxalignError(f"buckets {buckets!r}: expected 'pow2', a list of lengths or null")
        b = max(_MIN_POW2, 1 << max(n - 1, 0).bit_length())
        return min(b, max_length) if max_length is not None and max_length >= n else b
    sizes = sorted(int(x) for x in buckets)
    if sizes[0] <= 0:
        raise JaxalignError(f"buckets {list(buckets)!r}: expected positive lengths")
    for b in sizes:
        if b >= n:
            return b
    if beyond == "multiple":
        return -(-n // sizes[-1]) * sizes[-1]
    raise JaxalignError(f"a sequence of {n} tokens is longer than the largest bucket ({sizes[-1]}); "
                        "add a larger bucket or lower max_length")


def batch_kind(example: dict) -> str:
    """``"sft"``, ``"preference"``, ``"ranked"``, ``"unpaired"`` or ``"prompt"`` from a tokenized
    example's keys."""
    if "input_ids" in example:
        return "sft"
    if "chosen_ids" in example:
        return "preference"
    if "response_ids" in example:
        return "ranked"
    if "completion_ids" in example:
        return "unpaired"
    if "prompt_ids" in example:
        return "prompt"
    raise JaxalignError(f"cannot batch an example with keys {sorted(example)}")


def unpaired_widths(prompt_lengths, completion_lengths, buckets=None, max_length: int | None = None):
    """``(Sp, Sc)``: the padded prompt and completion widths of an unpaired batch whose longest
    prompt and completion have these lengths, each rounded up to a bucket."""
    return (bucket_length(int(max(prompt_lengths)), buckets, max_length),
            bucket_length(int(max(completion_lengths)), buckets, max_length))


def _unpaired(examples: Sequence[dict], pad_id: int, widths) -> dict[str, np.ndarray]:
    sp, sc = (int(w) for w in widths)
    b = len(examples)
    out = {k: np.full((b, w), pad_id, np.int32) for k, w in (("prompt_input_ids", sp), ("completion_input_ids", sc))}
    out["prompt_attention_mask"] = np.zeros((b, sp), np.int32)
    out["completion_attention_mask"] = np.zeros((b, sc), np.int32)
    for i, e in enumerate(examples):
        p, c = e["prompt_ids"], e["completion_ids"]
        if len(p) > sp or len(c) > sc:
            raise JaxalignError(f"a prompt of {len(p)} and a completion of {len(c)} tokens do not fit the "
                                f"padded widths ({sp}, {sc})")
        if len(p):
            out["prompt_input_ids"][i, sp - len(p):] = p
            out["prompt_attention_mask"][i, sp - len(p):] = 1
        out["completion_input_ids"][i, :len(c)] = c
        out["completion_attention_mask"][i, :len(c)] = 1
    out["label"] = np.asarray([bool(e["label"]) for e in examples], np.int32)
    return out


def _right_pad(seqs: Sequence[np.ndarray], masks: Sequence[np.ndarray], s: int, pad_id: int):
    b = len(seqs)
    ids = np.full((b, s), pad_id, np.int32)
    attn = np.zeros((b, s), np.int32)
    comp = np.zeros((b, s), np.int32)
    for i, (x, m) in enumerate(zip(seqs, masks)):
        n = len(x)
        if n > s:
            raise JaxalignError(f"a sequence of {n} tokens does not fit the padded length {s}")
        ids[i, :n] = x
        attn[i, :n] = 1
        comp[i, :n] = m
    return ids, attn, comp


def collate(examples: Sequence[dict], pad_id: int, buckets=None, *, length: int | None = None,
            num_responses: int | None = None, max_length: int | None = None) -> dict[str, np.ndarray]:
    """Pad tokenized examples (all of one kind) into a numpy batch (keys: module docstring).

    Args:
      examples: from :func:`jaxalign.data.tokenize.tokenize_examples`.
      pad_id: the padding token (may equal EOS: masks come from lengths).
      buckets: see :func:`bucket_length`.
      length: the padded length S to use (default: the longest sequence, rounded up to a bucket);
        for unpaired examples a pair ``(Sp, Sc)`` of prompt and completion widths (default: each
        part's longest, rounded up to a bucket).
      num_responses: K for ranked batches (default: the most responses in ``examples``).
      max_length: caps ``"pow2"`` buckets.
    """
    if not examples:
        raise JaxalignError("cannot collate an empty batch")
    if pad_id is None:
        raise JaxalignError("pad_id is None; give the tokenizer a pad token (or use its EOS id)")
    kind = batch_kind(examples[0])
    if any(batch_kind(e) != kind for e in examples):
        raise JaxalignError("cannot collate examples of different formats into one batch")
    if kind == "unpaired":
        if length is None:
            length = unpaired_widths([len(e["prompt_ids"]) for e in examples],
                                     [len(e["completion_ids"]) for e in examples], buckets, max_length)
        if not isinstance(length, (tuple, list)) or len(length) != 2:
            raise JaxalignError(f"unpaired batches take length=(prompt width, completion width), got {length!r}")
        return _unpaired(examples, pad_id, length)
    if length is None:
        length = bucket_length(max(sequence_length(e) for e in examples), buckets, max_length)
    s = int(length)
    if kind == "sft":
        ids, attn, comp = _right_pad([e["input_ids"] for e in examples],
                                     [e["completion_mask"] for e in examples], s, pad_id)
        return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp}
    if kind == "preference":
        out = {}
        for side in ("chosen", "rejected"):
            ids, attn, comp = _right_pad([e[f"{side}_ids"] for e in examples],
                                         [e[f"{side}_mask"] for e in examples], s, pad_id)
            out.update({f"{side}_input_ids": ids, f"{side}_attention_mask": attn,
                        f"{side}_completion_mask": comp})
        # Per-example float fields (the data's ``margin``, precomputed reference log-probs
        # ``ref_chosen_logp`` / ``ref_rejected_logp``, ...) become float32 [B] arrays.
        for key in sorted({k for e in examples for k, v in e.items() if isinstance(v, (float, np.floating))}):
            if not all(key in e for e in examples):
                raise JaxalignError(f"some preference examples have a {key} and some do not")
            out[key] = np.asarray([e[key] for e in examples], np.float32)
        return out
    if kind == "ranked":
        k = num_responses or max(len(e["response_ids"]) for e in examples)
        b = len(examples)
        ids = np.full((b, k, s), pad_id, np.int32)
        attn = np.zeros((b, k, s), np.int32)
        comp = np.zeros((b, k, s), np.int32)
        valid = np.zeros((b, k), np.int32)
        for i, e in enumerate(examples):
            n = len(e["response_ids"])
            if n > k:
                raise JaxalignError(f"an example has {n} responses, more than K={k}")
            ids[i, :n], attn[i, :n], comp[i, :n] = _right_pad(e["response_ids"], e["response_masks"], s, pad_id)
            valid[i, :n] = 1
        return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp, "rank_valid": valid}
    # prompt-only: left padding for generation
    b = len(examples)
    ids = np.full((b, s), pad_id, np.int32)
    mask = np.zeros((b, s), np.int32)
    for i, e in enumerate(examples):
        x = e["prompt_ids"]
        n = len(x)
        if n > s:
            raise JaxalignError(f"a prompt of {n} tokens does not fit the padded length {s}")
        if n:
            ids[i, s - n:] = x
            mask[i, s - n:] = 1
    out = {"prompt_ids": ids, "prompt_mask": mask}
    if any("columns" in e for e in examples):
        out["row"] = np.asarray([e.get("row", -1) for e in examples], np.int32)
    return out


def columns_by_row(examples: Sequence[dict]) -> dict[int, dict]:
    """``{row: columns}`` of tokenized prompt examples that carry other columns (the lookup for a
    prompt batch's ``row``); two examples with one row id are an error (the lookup would mix
    them up)."""
    table = {int(e.get("row", -1)): e["columns"] for e in examples if "columns" in e}
    if len(table) != sum("columns" in e for e in examples):
        raise JaxalignError("prompt examples with other columns must have distinct 'row' ids "
                            "(their source rows), to look the columns up by row")
    return table


def batch_columns(table: dict[int, dict] | None, rows, repeat: int = 1) -> dict[str, list]:
    """The other columns of a prompt batch's rows, ``{name: values}``, each value repeated
    ``repeat`` times in a row (as the sampler repeats each prompt for its samples), so the
    lists align with the completions. A row without a column gives None there."""
    if not table or rows is None:
        return {}
    cells = [table.get(int(r), {}) for r in np.asarray(rows).reshape(-1)]
    names = list(dict.fromkeys(k for c in cells for k in c))
    return {k: [c.get(k) for c in cells for _ in range(repeat)] for k in names}


def full_batches(examples: Sequence[dict], batch_size: int, pad_id: int, buckets=None, *,
                 length: int | None = None, max_length: int | None = None):
    """Collated batches of exactly ``batch_size`` examples, in order, for a fixed-shape pass
    (evaluation, sampling, precomputing): the last batch is filled with repeats of its last
    example, so every batch has one shape and a jitted function compiles once.

    Yields ``(start, batch, real)``: the index of the batch's first example, the batch (see
    :func:`collate`; ``buckets``, ``length`` and ``max_length`` are passed on) and how many of its
    rows are real (the rest are repeats to be ignored).
    """
    examples = list(examples)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        real = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - real)
        yield start, collate(chunk, pad_id, buckets, length=length, max_length=max_length), real


class BatchIterator:
    """Deterministic, resumable iterator of padded numpy batches.

    Epoch ``e`` visits the examples in the order ``np.random.default_rng([seed, e]).permutation``
    (or in order without ``shuffle``). ``batch_size`` is global: process ``i`` of ``n`` gets rows
    ``[i*B/n, (i+1)*B/n)`` of every global batch, padded to the length of the whole global batch,
    so every process builds the same shapes. ``state_dict()`` is a small JSON-able dict; after
    ``load_state_dict`` the following batches equal those of an uninterrupted run.

    Args:
      examples: tokenized examples (one kind).
      batch_size: global batch size; must be divisible by ``process_count``.
      seed: shuffling seed.
      shuffle: permute each epoch.
      drop_last: drop each epoch's final partial batch; otherwise it is yielded smaller (trimmed
        to a multiple of ``process_count``).
      pad_id: padding token id.
      buckets: None, ``"pow2"`` or a list of lengths (see :func:`bucket_length`).
      max_length: caps ``"pow2"`` buckets.
      process_index, process_count: this process's place among the data-loading processes.
      num_epochs: stop after this many epochs (None: never stop).
    """

    def __init__(self, examples: Sequence[dict], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, pad_id: int, buckets=None, max_length: int | None = None,
                 process_index: int = 0, process_count: int = 1, num_epochs: int | None = None):
        n = len(examples)
        if batch_size <= 0:
            raise JaxalignError(f"batch_size must be > 0, got {batch_size}")
        if process_count <= 0 or not 0 <= process_index < process_count:
            raise JaxalignError(f"process_index {process_index} is not in [0, process_count={process_count})")
        if batch_size % process_count:
            raise JaxalignError(f"the global batch_size {batch_size} is not divisible by the "
                                f"{process_count} data-loading processes")
        if n == 0:
            raise JaxalignError("no examples to batch")
        if drop_last and n < batch_size:
            raise JaxalignError(f"only {n} examples for a global batch of {batch_size} (drop_last=True)")
        if pad_id is None:
            raise JaxalignError("pad_id is None; give the tokenizer a pad token (or use its EOS id)")
        if seed < 0:
            raise JaxalignError(f"seed must be >= 0, got {seed}")
        bucket_length(1, buckets)  # validate early
        self.examples = examples
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, int(seed), shuffle, drop_last
        self.pad_id, self.buckets, self.max_length = pad_id, buckets, max_length
        self.process_index, self.process_count, self.num_epochs = process_index, process_count, num_epochs
        self.kind = batch_kind(examples[0])
        self._lengths = np.asarray([sequence_length(e) for e in examples], np.int64)
        if self.kind == "unpaired":  # two widths: left-padded prompts, right-padded completions
            self._parts = np.asarray([(len(e["prompt_ids"]), len(e["completion_ids"])) for e in examples], np.int64)
        self._k = max(len(e["response_ids"]) for e in examples) if self.kind == "ranked" else None
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = -1, None

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in one epoch."""
        n, b = len(self.examples), self.batch_size
        if self.drop_last:
            return n // b
        full, rest = divmod(n, b)
        return full + (1 if rest - rest % self.process_count > 0 else 0)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = len(self.examples)
            self._order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                           else np.arange(n))
            self._order_epoch = epoch
        return self._order

    def global_indices(self, epoch: int, position: int) -> np.ndarray:
        """Example indices of global batch ``position`` of ``epoch`` (all processes)."""
        order = self._epoch_order(epoch)
        idx = order[position * self.batch_size:(position + 1) * self.batch_size]
        return idx[: len(idx) - len(idx) % self.process_count]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        idx = self.global_indices(self.epoch, self.position)
        self.position += 1
        length = self._length(idx)
        per = len(idx) // self.process_count
        mine = idx[self.process_index * per:(self.process_index + 1) * per]
        return collate([self.examples[i] for i in mine], self.pad_id, length=length, num_responses=self._k)

    def longest_batch(self) -> dict[str, np.ndarray]:
        """A batch of the largest shape this iterator yields (the longest example's padded length,
        K responses), for a memory check; its rows are the first examples, in order."""
        length = self._length(np.arange(len(self.examples)))
        rows = [self.examples[i % len(self.examples)] for i in range(self.batch_size // self.process_count)]
        return collate(rows, self.pad_id, length=length, num_responses=self._k)

    def _length(self, idx):
        """The padded length of a global batch of examples ``idx`` (all processes pad alike)."""
        if self.kind == "unpaired":
            return unpaired_widths(self._parts[idx, 0], self._parts[idx, 1], self.buckets, self.max_length)
        return bucket_length(int(self._lengths[idx].max()), self.buckets, self.max_length)

    def fingerprint(self) -> str:
        """A digest of the examples' content (every field, in order; cached): two iterators over
        the same tokenized data agree, a swapped field or one changed token does not."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = examples_fingerprint(self.examples)
        return self._fingerprint

    def state_dict(self) -> dict:
        """Position of the iterator: ``{"epoch", "position", "seed", "num_examples", "batch_size"}``."""
        epoch, position = self.epoch, self.position
        if position >= self.batches_per_epoch:
            epoch, position = epoch + 1, 0
        return {"epoch": int(epoch), "position": int(position), "seed": self.seed,
                "num_examples": len(self.examples), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict` of an iterator over the same data)."""
        if state.get("packing"):
            raise JaxalignError("config key 'data.packing': the checkpoint's batches were packed; resume with it")
        for key, mine in (("seed", self.seed), ("num_examples", len(self.examples)),
                          ("batch_size", self.batch_size)):
            if key in state and int(state[key]) != mine:
                raise JaxalignError(f"data iterator state has {key}={state[key]}, but this run has {mine}; "
                                    "resume with the same data, seed and batch size")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.batches_per_epoch:
            raise JaxalignError(f"data iterator state out of range: epoch {epoch}, position {position}")
        self.epoch, self.position = epoch, position


def train_eval_split(examples: Sequence, eval_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Hold out ``round(eval_fraction * n)`` examples (at least 1 when the fraction is > 0) for eval,
    chosen by ``seed``; both parts keep the original order."""
    if not 0.0 <= eval_fraction < 1.0:
        raise JaxalignError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(examples)
    k = 0 if eval_fraction == 0 else max(1, int(round(eval_fraction * n)))
    if k >= n:
        raise JaxalignError(f"eval_fraction {eval_fraction} leaves no training examples out of {n}")
    held = set(np.random.default_rng([seed, 2**31 - 1]).permutation(n)[:k].tolist())
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])
