"""What ``data.train`` / ``data.eval`` name, and how a list of sources is mixed.

A source is a string, or a mapping ``{path, weight, subset, columns}`` whose ``path`` is such a
string:

- a data file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``) or ``shipped:NAME``;
- a dataset directory (``datasets.load_dataset`` layout, or ``save_to_disk``);
- a Hugging Face Hub dataset, ``org/name`` or ``org/name@revision``.

A directory or Hub dataset may end in ``:split`` (default ``train``). ``subset`` is the dataset's
config name (default: ``data.subset``, which single files, having no subsets, ignore); ``columns``
maps the data's column names onto the format's fields (default: ``data.columns``).

A list of sources is their concatenation, each source's rows repeated by its **weight** ``w``
(a number > 0, default 1): a source of ``n`` rows contributes ``round(w * n)`` of them — every row
``floor(w)`` times, plus a sample of ``round((w - floor(w)) * n)`` rows once more, drawn with the
run's seed (so ``2`` doubles a source, ``0.5`` takes half of it, ``1.5`` all of it and half again).
Source ``i`` is thus a ``w_i * n_i / sum_j(w_j * n_j)`` share of the mixture, and the same config
and seed always give the same rows.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from jaxalign.errors import JaxalignError, short

_SPLIT = re.compile(r"(?P<path>.+):(?P<split>[A-Za-z0-9_][\w.-]*)")
_SOURCE_KEYS = ("path", "weight", "subset", "columns")


@dataclasses.dataclass(frozen=True)
class Source:
    """One data source of ``data.train`` / ``data.eval``; ``key`` names it in errors
    (``data.train`` or ``data.train[1]``)."""

    path: str
    split: str | None = None
    subset: str | None = None
    columns: dict | None = None
    weight: float = 1.0
    key: str = "data.train"
    columns_key: str = "data.columns"  # where ``columns`` came from, for errors
    own_subset: bool = False  # set by the source itself, not inherited from data.subset


def split_of(path: str) -> tuple[str, str | None]:
    """``(path, split)`` of ``"path:split"``; a path that exists locally (even with a ``:`` in its
    name) or a ``shipped:`` name has no split."""
    if path.startswith("shipped:") or Path(path).expanduser().exists():
        return path, None
    m = _SPLIT.fullmatch(path)
    return (m["path"], m["split"]) if m else (path, None)


def check_columns(columns, key: str) -> dict | None:
    """``columns`` if it maps column names (strings) onto field names (strings) or null (drop the
    column), with no two columns onto one field; else a one-line error naming ``key``."""
    if columns is None:
        return None
    if not isinstance(columns, dict):
        raise JaxalignError(f"config key {key!r}: expected a mapping {{column: field}}, got {short(columns)}")
    seen: dict = {}
    for col, field in columns.items():
        if not isinstance(col, str) or not col:
            raise JaxalignError(f"config key {key!r}: column names are strings, got {short(col)}")
        if field is not None and (not isinstance(field, str) or not field):
            raise JaxalignError(f"config key '{key}.{col}': expected a field name (a string) or null "
                                f"(drop the column), got {short(field)}")
        if field is not None and field in seen:
            raise JaxalignError(f"config key {key!r}: both {seen[field]!r} and {col!r} map onto {field!r}")
        seen[field] = col
    return columns


def _weight(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JaxalignError(f"config key {key!r}: expected a number > 0, got {short(value)}")
    if not math.isfinite(value) or value <= 0:
        raise JaxalignError(f"config key {key!r}: must be a finite number > 0, got {value}")
    return float(value)


def _one(item, key: str, subset, columns) -> Source:
    if isinstance(item, str):
        item = {"path": item}
    if not isinstance(item, dict):
        raise JaxalignError(f"config key {key!r}: expected a path or a mapping {{path, weight, subset, columns}}, "
                            f"got {short(item)}")
    for k in item:
        if k not in _SOURCE_KEYS:
            import difflib

            near = difflib.get_close_matches(str(k), _SOURCE_KEYS, n=1, cutoff=0.5)
            hint = f"; did you mean '{key}.{near[0]}'?" if near else ""
            name = repr(f"{key}.{k}")[1:-1]  # escaped: a YAML key may hold a newline
            raise JaxalignError(f"unknown config key '{name}'{hint} (valid here: {', '.join(_SOURCE_KEYS)})")
    path = item.get("path")
    if not isinstance(path, str) or not path.strip():
        raise JaxalignError(f"config key '{key}.path': expected a file, directory or Hub dataset name, "
                            f"got {short(path)}")
    sub = item.get("subset", subset)
    if sub is not None and not isinstance(sub, str):
        raise JaxalignError(f"config key '{key}.subset': expected a string, got {short(sub)}")
    own = "columns" in item
    cols = check_columns(item["columns"], f"{key}.columns") if own else columns
    path, split = split_of(path.strip())
    return Source(path, split, sub, cols, _weight(item.get("weight", 1), f"{key}.weight"), key,
                  f"{key}.columns" if own else "data.columns", "subset" in item)


def parse_sources(value, key: str, subset: str | None = None, columns: dict | None = None) -> list[Source]:
    """The sources of ``data.train`` / ``data.eval`` (``key``): a string, a mapping or a non-empty
    list of them; ``subset`` / ``columns`` are the defaults (``data.subset``, ``data.columns``)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise JaxalignError(f"config key {key!r}: an empty list; give at least one source")
        return [_one(item, f"{key}[{i}]", subset, columns) for i, item in enumerate(value)]
    return [_one(value, key, subset, columns)]


def describe(value) -> str:
    """``data.train``'s value for a message: the path, or how many sources a list holds."""
    if isinstance(value, (list, tuple)):
        return f"its {len(value)} sources" if len(value) != 1 else describe(value[0])
    if isinstance(value, dict):
        return str(value.get("path"))
    return str(value)


def weighted(groups: list[list], weights: list[float], seed: int = 0) -> list:
    """The concatenation of ``groups``, each repeated by its weight (see the module docstring):
    ``floor(w)`` copies of every row plus a seeded sample of ``round(frac(w) * n)`` rows, in the
    rows' order. One group of weight 1 comes back as it is."""
    import numpy as np

    if len(groups) == 1 and weights[0] == 1:
        return list(groups[0])
    out: list = []
    for i, (rows, w) in enumerate(zip(groups, weights)):
        whole, frac = int(math.floor(w)), w - math.floor(w)
        out.extend(list(rows) * whole)
        k = int(round(frac * len(rows)))
        if k:
            picked = np.sort(np.random.default_rng([seed, i, 7919]).permutation(len(rows))[:k])
            out.extend(rows[j] for j in picked.tolist())
    return out


def map_columns(rows, columns: dict | None, source: str, key: str = "data.columns"):
    """``rows`` (a ``datasets.Dataset`` or a list of dicts) with each column of ``columns`` renamed
    to its field, or dropped where the field is null; before format detection, so
    ``{question: prompt, response: completion}`` makes prompt-completion rows.

    Raises:
      JaxalignError: a column the data do not have (one line, listing the columns they have), or
        a rename onto a column that exists and stays.
    """
    if not columns:
        return rows
    if hasattr(rows, "column_names"):
        have = list(rows.column_names)
    else:
        have = list(dict.fromkeys(k for r in rows if isinstance(r, dict) for k in r))
    for col in columns:
        if col not in have:
            raise JaxalignError(f"config key {key!r}: {source} has no column {col!r} "
                                f"(its columns: {', '.join(map(str, have)) or 'none'})")
    renamed = {c: f for c, f in columns.items() if f is not None and f != c}
    dropped = [c for c, f in columns.items() if f is None]
    for col, field in renamed.items():
        if field in have and field not in columns:
            raise JaxalignError(f"config key '{key}.{col}': {source} already has a column {field!r}; drop or "
                                f"rename it too (e.g. {field}: null) to map {col!r} onto {field!r}")
    if hasattr(rows, "column_names"):
        # rename_columns renames all at once, so a swap (a: b, b: a) works.
        rows = rows.remove_columns(dropped) if dropped else rows
        return rows.rename_columns(renamed) if renamed else rows
    return [{renamed.get(k, k): v for k, v in r.items() if k not in dropped} if isinstance(r, dict) else r
            for r in rows]
