"""Packed, padding-free training batches (``data.packing: true``) for SFT, RM and DPO.

Several examples share one row of ``data.max_length`` tokens instead of one example per padded
row. Each token carries a **segment id** (1, 2, ... for the examples of its row, 0 for the
padding at its end); the model confines attention to a segment (a block-diagonal causal mask)
and restarts positions at each segment's first token, so every example is computed exactly as
it would be alone in an unpacked row (see docs/design-notes.md, "Packing").

Units: an SFT example is one segment. A preference pair is one unit, never split across rows,
so both of its log-probs come from one forward pass: its **shared prompt** once (segment
``2K + j + 1`` for pair slot ``j``), then the rest of the chosen sequence (segment ``2j + 1``),
then the rest of the rejected one (segment ``2j + 2``). Chosen and rejected both attend to the
shared prompt (``prefix_ids``: the segment a token may attend to besides its own), not to each
other, and their positions continue from the prompt's (``position_ids``), so each is computed
exactly as alone. What is shared (:func:`shared_prefix_length`): the longest common prefix of
the two token sequences that is prompt in both, less its last token, which each sequence keeps
so that its own segment predicts its first completion token. Preference rows hold
``2 * data.max_length`` tokens, so that any pair fits (each of its sequences was truncated to
``data.max_length``), at most the tokens of one unpacked pair ``[2, S]``.

Batch dicts (numpy):

- SFT: ``input_ids``, ``attention_mask``, ``completion_mask``, ``segment_ids`` ``[R, S]``;
- preference: the same four ``[R, S]`` arrays and ``prefix_ids``, ``position_ids`` ``[R, S]``;
  ``pair_valid [R, K]`` (1 where row slot ``j`` holds a pair), ``shared_length [R, K]`` (the
  prompt tokens the pair's two sequences share: the row holds that many fewer tokens than the
  pair unpacked) and every per-pair float field (``margin``, ``ref_chosen_logp``, ...) as
  float32 ``[R, K]`` (0 in empty slots). ``K`` is fixed per iterator: the most pairs a row can
  hold (``row length // shortest pair``), so shapes repeat and the step compiles once.

The completion mask is 0 at every segment's first token: nothing in the segment predicts it
(the unpacked path drops position 0 for the same reason).

Batch size: ``train.batch_size`` counts **rows** when packing (a step is a fixed number of
packed rows, so shapes and micro-batches are fixed); the number of examples per step varies.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxalign.data.batching import batch_kind, bucket_length
from jaxalign.data.fingerprint import examples_fingerprint
from jaxalign.errors import JaxalignError

PACKABLE = ("sft", "preference")
# First fit looks for room in at most this many of the most recent rows: O(n · window) instead
# of O(n · rows), and rows older than that are almost full anyway.
_WINDOW = 64


def shared_prefix_length(example: dict) -> int:
    """Tokens a preference pair's chosen and rejected sequences share in a packed row: ``p`` such
    that the first ``p`` token ids are equal, neither sequence has a completion token among its
    first ``p + 1`` (no shared token is predicted, nor predicts a loss token), and each sequence
    keeps at least one token of its own. 0 when nothing can be shared."""
    a, b = np.asarray(example["chosen_ids"]), np.asarray(example["rejected_ids"])
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    common = int(diff[0]) if diff.size else n
    firsts = [int(np.flatnonzero(m)[0]) if np.any(m) else len(m)
              for m in (np.asarray(example["chosen_mask"]), np.asarray(example["rejected_mask"]))]
    return max(0, min(common, min(firsts) - 1, n - 1))


def unit_length(example: dict) -> int:
    """Tokens one unit takes in a row: an SFT example's, or a pair's chosen + rejected less the
    prompt they share (:func:`shared_prefix_length`)."""
    if "input_ids" in example:
        return len(example["input_ids"])
    return len(example["chosen_ids"]) + len(example["rejected_ids"]) - shared_prefix_length(example)


def pack(lengths: Sequence[int], capacity: int, window: int = _WINDOW) -> list[list[int]]:
    """First-fit packing of units of ``lengths`` (in this order) into rows of ``capacity`` tokens:
    each unit goes into the first of the last ``window`` rows with room, else a new row.
    Returns the rows as lists of indices into ``lengths``, in the order they were opened; units
    keep their relative order within a row. Deterministic (no randomness, no ties)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i, n in enumerate(lengths):
        n = int(n)
        if n > capacity:
            raise JaxalignError(f"a unit of {n} tokens does not fit a packed row of {capacity}")
        lo = max(0, len(rows) - window)
        for r in range(lo, len(rows)):
            if free[r] >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    return rows


def collate_packed(examples: Sequence[dict], rows: Sequence[Sequence[int]], pad_id: int, length: int,
                   max_units: int | None = None) -> dict[str, np.ndarray]:
    """Packed batch of ``rows`` (lists of indices into ``examples``), each right-padded to
    ``length`` (keys: module docstring). ``max_units``: the ``K`` of preference batches."""
    kind = batch_kind(examples[rows[0][0]])
    if kind not in PACKABLE:
        raise JaxalignError(f"cannot pack {kind} examples (packing supports {', '.join(PACKABLE)})")
    r, s = len(rows), int(length)
    ids = np.full((r, s), pad_id, np.int32)
    attn = np.zeros((r, s), np.int32)
    comp = np.zeros((r, s), np.int32)
    seg = np.zeros((r, s), np.int32)
    out = {"input_ids": ids, "attention_mask": attn, "completion_mask": comp, "segment_ids": seg}
    if kind == "preference":
        k = max_units or max(len(x) for x in rows)
        floats = sorted({key for row in rows for i in row for key, v in examples[i].items()
                         if isinstance(v, (float, np.floating))})
        valid = np.zeros((r, k), np.int32)
        shared = np.zeros((r, k), np.int32)
        prefix = np.zeros((r, s), np.int32)
        pos = np.zeros((r, s), np.int32)
        fields = {key: np.zeros((r, k), np.float32) for key in floats}
    for ri, row in enumerate(rows):
        t, n_seg = 0, 0
        if kind == "preference" and len(row) > k:
            raise JaxalignError(f"a packed row holds {len(row)} pairs, more than K={k}")
        for j, i in enumerate(row):
            e = examples[i]
            if kind == "sft":
                parts = [(e["input_ids"], e["completion_mask"], 0, 0, 0)]
            else:
                p = shared_prefix_length(e)
                home = 2 * k + j + 1 if p else 0
                # (tokens, loss mask, segment id (0: the next one), the segment it also attends
                # to, the position of its first token)
                parts = [(e["chosen_ids"][:p], e["chosen_mask"][:p], home, 0, 0)] if p else []
                parts += [(e["chosen_ids"][p:], e["chosen_mask"][p:], 0, home, p),
                          (e["rejected_ids"][p:], e["rejected_mask"][p:], 0, home, p)]
                valid[ri, j], shared[ri, j] = 1, p
                for key in floats:
                    if key not in e:
                        raise JaxalignError(f"some preference examples have a {key} and some do not")
                    fields[key][ri, j] = e[key]
            for x, m, sid, parent, first in parts:
                n = len(x)
                if t + n > s:
                    raise JaxalignError(f"a packed row of {t + n} tokens does not fit the length {s}")
                if not sid:
                    n_seg += 1
                    sid = n_seg
                ids[ri, t:t + n] = x
                attn[ri, t:t + n] = 1
                comp[ri, t:t + n] = m
                comp[ri, t] = 0  # a segment's first token has no prediction inside the segment
                seg[ri, t:t + n] = sid
                if kind == "preference":
                    pos[ri, t:t + n] = np.arange(first, first + n)
                    prefix[ri, t:t + n] = parent
                t += n
    if kind == "preference":
        out.update(prefix_ids=prefix, position_ids=pos, pair_valid=valid, shared_length=shared)
        out.update(fields)
    return out


def unpacked_sequences(batch: dict) -> list[list[list[int]]]:
    """The token sequences of each row of a packed ``batch``, as the examples hold them: an SFT
    row's examples; a preference row's chosen, rejected, chosen, ... (a shared prompt prepended
    to both). The inverse of :func:`collate_packed`, for checks and debugging."""
    out = []
    pairs = "pair_valid" in batch
    for r, (ids, seg) in enumerate(zip(batch["input_ids"], batch["segment_ids"])):
        top = 2 * int(batch["pair_valid"][r].sum()) if pairs else int(seg.max())
        row = []
        for sid in range(1, top + 1):
            own = seg == sid
            parent = int(batch["prefix_ids"][r][own][0]) if pairs else 0
            head = ids[seg == parent].tolist() if parent else []
            row.append(head + ids[own].tolist())
        out.append(row)
    return out


class PackedBatchIterator:
    """Deterministic, resumable iterator of packed batches of ``batch_size`` rows (the packed
    counterpart of :class:`~jaxalign.data.BatchIterator`, with the same ``state_dict`` protocol).

    Epoch ``e`` orders the examples by ``np.random.default_rng([seed, e]).permutation`` (or in
    order without ``shuffle``), packs them with :func:`pack` into rows of ``max_length`` tokens
    (``2 * max_length`` for preference pairs) and walks the rows ``batch_size`` at a time; the
    rows left over at the end of an epoch are dropped with ``drop_last``, else yielded as a
    smaller last batch. Each epoch's packing is a pure function of (seed, epoch), so a resume
    at any ``(epoch, position)`` yields the same batches as an uninterrupted run. Rows are
    right-padded to a bucket of the global batch's longest row (all processes alike).
    """

    def __init__(self, examples: Sequence[dict], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, pad_id: int, buckets=None, max_length: int,
                 process_index: int = 0, process_count: int = 1, num_epochs: int | None = None):
        if batch_size <= 0:
            raise JaxalignError(f"config key 'train.batch_size': must be > 0, got {batch_size}")
        if batch_size % process_count:
            raise JaxalignError(f"config key 'train.batch_size': {batch_size} packed rows are not divisible "
                                f"by the {process_count} data-loading processes")
        if not examples:
            raise JaxalignError("no examples to batch")
        if pad_id is None:
            raise JaxalignError("pad_id is None; give the tokenizer a pad token (or use its EOS id)")
        if max_length is None or max_length <= 0:
            raise JaxalignError(f"config key 'data.max_length': packing needs a row length > 0, got {max_length}")
        self.kind = batch_kind(examples[0])
        if self.kind not in PACKABLE:
            raise JaxalignError(f"config key 'data.packing': packs {' and '.join(PACKABLE)} data, "
                                f"not {self.kind}")
        self.examples = examples
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, int(seed), shuffle, drop_last
        self.pad_id, self.buckets, self.max_length = pad_id, buckets, int(max_length)
        self.process_index, self.process_count, self.num_epochs = process_index, process_count, num_epochs
        self.capacity = self.max_length * (2 if self.kind == "preference" else 1)
        self._units = np.asarray([unit_length(e) for e in examples], np.int64)
        longest = int(self._units.max())
        if longest > self.capacity:
            raise JaxalignError(f"config key 'data.max_length': an example of {longest} tokens does not fit "
                                f"a packed row of {self.capacity}")
        self.max_units = max(1, self.capacity // max(int(self._units.min()), 1))
        if drop_last and self.batches_in_epoch(0) == 0:
            raise JaxalignError(f"config key 'train.batch_size': the {len(examples)} examples pack into "
                                f"{len(self._rows(0))} rows, fewer than one batch of {batch_size} rows")
        self.epoch, self.position = 0, 0

    def _rows(self, epoch: int) -> list[list[int]]:
        """Epoch ``epoch``'s rows (example indices), packed in that epoch's order; cached."""
        if getattr(self, "_rows_epoch", None) != epoch:
            n = len(self.examples)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._rows_cache = [[int(order[i]) for i in row] for row in pack(self._units[order], self.capacity)]
            self._rows_epoch = epoch
        return self._rows_cache

    def batches_in_epoch(self, epoch: int) -> int:
        """Global batches in epoch ``epoch`` (its row count varies a little with the order)."""
        full, rest = divmod(len(self._rows(epoch)), self.batch_size)
        return full + (0 if self.drop_last or rest - rest % self.process_count == 0 else 1)

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in the first epoch (an estimate for the others)."""
        return self.batches_in_epoch(0)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        return self

    def global_rows(self, epoch: int, position: int) -> list[list[int]]:
        """The rows (example indices) of global batch ``position`` of ``epoch`` (all processes)."""
        rows = self._rows(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
        return rows[: len(rows) - len(rows) % self.process_count]

    def _length(self, rows) -> int:
        used = max(int(self._units[row].sum()) for row in rows)
        return bucket_length(used, self.buckets, self.capacity)

    def __next__(self) -> dict[str, np.ndarray]:
        if self.position >= self.batches_in_epoch(self.epoch):
            self.epoch, self.position = self.epoch + 1, 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        rows = self.global_rows(self.epoch, self.position)
        self.position += 1
        per = len(rows) // self.process_count
        mine = rows[self.process_index * per:(self.process_index + 1) * per]
        return collate_packed(self.examples, mine, self.pad_id, self._length(rows), self.max_units)

    def longest_batch(self) -> dict[str, np.ndarray]:
        """A batch of the largest shape this iterator yields (rows of the full row length, K pair
        slots), for the memory preflight: the first epoch's first rows, padded to the capacity."""
        rows = self._rows(0)
        rows = [rows[i % len(rows)] for i in range(self.batch_size // self.process_count)]
        length = bucket_length(self.capacity, self.buckets, self.capacity)
        return collate_packed(self.examples, rows, self.pad_id, length, self.max_units)

    def fingerprint(self) -> str:
        """A digest of the examples' content (see :meth:`BatchIterator.fingerprint`)."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = examples_fingerprint(self.examples)
        return self._fingerprint

    def state_dict(self) -> dict:
        """``{"epoch", "position", "seed", "num_examples", "batch_size", "packing": True}``."""
        epoch, position = self.epoch, self.position
        if position >= self.batches_in_epoch(epoch):
            epoch, position = epoch + 1, 0
        return {"epoch": int(epoch), "position": int(position), "seed": self.seed,
                "num_examples": len(self.examples), "batch_size": self.batch_size, "packing": True}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict` of an iterator over the same data)."""
        if not state.get("packing", False):
            raise JaxalignError("config key 'data.packing': the checkpoint's data iterator was not packed; "
                                "resume with the same data.packing")
        for key, mine in (("seed", self.seed), ("num_examples", len(self.examples)),
                          ("batch_size", self.batch_size)):
            if key in state and int(state[key]) != mine:
                raise JaxalignError(f"data iterator state has {key}={state[key]}, but this run has {mine}; "
                                    "resume with the same data, seed and batch size")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.batches_in_epoch(epoch):
            raise JaxalignError(f"data iterator state out of range: epoch {epoch}, position {position}")
        self.epoch, self.position = epoch, position
