"""Reading dataset files into rows: Hugging Face ``datasets`` first, a line reader as fallback.

``datasets`` reads JSONL / JSON / Parquet / CSV (and dataset dirs, hub names) into Arrow tables.
Where that loses information a row check needs, the file is read line by line instead:
a JSONL line that is not JSON, or bytes that are not UTF-8 (pyarrow lets them into string
columns), or a column mixing strings and lists (plain and conversational rows), which
``datasets`` types as ``Json`` and then parses strings again (``" 3."`` -> ``3.0``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

from jaxalign.data.fields import Unreadable, _tname, _utf8_ok, one_line
from jaxalign.data.formats import check_rows
from jaxalign.data.hub import hub_rows, load_split
from jaxalign.errors import JaxalignError
from jaxalign.io.hub import parse_hub_id

_EXTENSIONS = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return one_line(s.splitlines()[0] if s else type(e).__name__, 200)


def _read_jsonl(path: Path) -> list:
    """JSON Lines read line by line: a bad line becomes an :class:`Unreadable` row, and bytes that
    are not UTF-8 survive as lone surrogates, so the row check can name the row and field. A bad
    last line without a newline is reported as a truncated file (an interrupted write or copy)."""
    rows: list = []
    data = path.read_bytes()
    lines = (data[len(_BOM):] if data.startswith(_BOM) else data).split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        text = raw.decode("utf-8", errors="surrogateescape")
        try:
            rows.append(json.loads(text))
        except (ValueError, RecursionError) as e:
            reason = "not valid UTF-8" if not _utf8_ok(text) else "not valid JSON"
            if i == len(lines) - 1:
                reason += "; the file ends inside this row (truncated?)"
            rows.append(Unreadable(f"{reason} ({_first_line(e)})"))
    return rows


@contextlib.contextmanager
def _quiet_datasets_readers():
    """Silence ``datasets``' file readers while they run: on a file pyarrow cannot parse they log
    the parser's error (two lines on stderr) before raising it, and that failure is either
    reported here in one line or answered by the line reader, which names the row."""
    logger = logging.getLogger("datasets.packaged_modules")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_json(path: Path) -> list:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig", errors="surrogateescape"))
    except (ValueError, RecursionError) as e:
        rows = _read_jsonl(path)  # maybe JSON Lines with a .json name
        if rows and isinstance(rows[0], dict):
            return rows
        raise JaxalignError(f"{path}: not valid JSON ({_first_line(e)})") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise JaxalignError(f"{path}: expected a JSON list of rows (or an object with one list field)")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise JaxalignError(f"{path}: expected a JSON list of rows, got {_tname(data)}")
    return data


# pyarrow's JSON reader (under ``datasets``) crashes the whole process (a segfault, no exception)
# on two kinds of input: a block that starts with ``null`` (a JSON Lines row ``null``), and
# nesting past ~10,000 levels. Such files go to the Python line reader instead, which names the
# bad row. (Python's json raises RecursionError on deep nesting rather than crashing.)
_MAX_NESTING = 256
_STRING = re.compile(rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"')  # unrolled: one pass, no backtracking
_NON_OBJECT_LINE = re.compile(rb"^[ \t\r\f\v]*[^{\s]", re.M)
_BOM = b"\xef\xbb\xbf"


def _arrow_unsafe(path: Path, limit: int = _MAX_NESTING) -> bool:
    """Whether handing the JSON file ``path`` to pyarrow could crash the process: a non-blank
    line that does not start an object (``.json`` files may start with ``[``), or brackets
    nested deeper than ``limit`` outside strings.

    Read in chunks split at newlines (a JSON string never holds a raw newline); a closing
    bracket with nothing open does not count below zero.
    """
    import numpy as np

    depth, low, tail, first = 0, 0, b"", True
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            data = tail + chunk
            if chunk:
                cut = data.rfind(b"\n") + 1
                data, tail = data[:cut], data[cut:]
                if not data:
                    continue
            if first:
                first = False
                data = data[len(_BOM):] if data.startswith(_BOM) else data
                if path.suffix.lower() == ".json" and data.lstrip()[:1] == b"[":
                    return False  # pyarrow refuses a top-level array at once; datasets parses it itself
            if _NON_OBJECT_LINE.search(data):
                return True
            a = np.frombuffer(_STRING.sub(b"", data), np.uint8)
            steps = (a == ord("[")).astype(np.int32) + (a == ord("{")) - (a == ord("]")) - (a == ord("}"))
            if steps.size:
                level = np.cumsum(steps, dtype=np.int64) + depth
                floor = np.minimum(np.minimum.accumulate(level), low)  # <= 0: unmatched closers
                if int(np.max(level - floor)) > limit:
                    return True
                depth, low = int(level[-1]), int(floor[-1])
            if not chunk:
                return False


def _valid_table(ds) -> bool:
    """Whether the Arrow table behind ``ds`` is valid (string columns hold UTF-8)."""
    import pyarrow as pa

    try:
        ds.data.table.validate(full=True)
        return True
    except (pa.ArrowInvalid, AttributeError):
        return False


def _has_json_feature(feature) -> bool:
    """Whether ``datasets`` typed any (nested) column with its schemaless ``Json`` feature."""
    if type(feature).__name__ == "Json":
        return True
    if isinstance(feature, dict):
        return any(_has_json_feature(f) for f in feature.values())
    inner = getattr(feature, "feature", None)
    return inner is not None and _has_json_feature(inner)


def _csv_features(path: Path):
    import csv as _csv

    import datasets

    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(_csv.reader(f), None)
    except UnicodeDecodeError:
        raise JaxalignError(f"{path}: the CSV header is not valid UTF-8") from None
    if not header:
        raise JaxalignError(f"{path}: empty CSV file (no header row)")
    # Every column as text: "" stays "" (not NaN), digits stay digits; lists are JSON text.
    return datasets.Features({name: datasets.Value("string") for name in header})


def load_dataset_rows(source, split: str | None = "train", cache_dir: str | None = None,
                      subset: str | None = None):
    """Rows of a dataset, loaded with Hugging Face ``datasets``.

    ``source``: a ``.jsonl``/``.json``/``.parquet``/``.csv`` file (by extension), a local
    dataset directory (``datasets.load_dataset(dir)``, or a ``save_to_disk`` directory), or a Hub
    dataset ``org/name`` / ``org/name@revision`` (from the local Hub cache when offline).
    ``split`` (default ``train``) and ``subset`` (the dataset's config name) pick one part of a
    directory or Hub dataset; a single file has only the split ``train``. JSON files that
    ``datasets`` cannot read as a table (broken lines, bytes that are not UTF-8) are read line by
    line instead, so that :func:`to_examples` reports the bad row and field. ``cache_dir``: where
    ``datasets`` caches (default: its own). Returns a ``datasets.Dataset`` or a list of dicts.
    """
    import datasets

    datasets.disable_progress_bars()
    p = Path(str(source)).expanduser()
    split = split or "train"
    try:
        if p.is_file() and (split != "train" or subset is not None):
            what = f"split {split!r}" if split != "train" else f"subset {subset!r}"
            raise JaxalignError(f"{source}: a single data file has no {what} (splits and subsets are for "
                                "dataset directories and Hub datasets)")
        if p.is_file():
            kind = _EXTENSIONS.get(p.suffix.lower())
            if kind is None:
                raise JaxalignError(f"{source}: unknown data file type {p.suffix!r}; expected one of "
                                    f"{', '.join(sorted(_EXTENSIONS))}")
            if kind == "json" and _arrow_unsafe(p):  # the Python reader names the line instead
                return _read_jsonl(p) if p.suffix.lower() != ".json" else _read_json(p)
            kw = {"cache_dir": cache_dir}
            if kind == "csv":
                kw.update(features=_csv_features(p), keep_default_na=False, na_filter=False)
            try:
                with _quiet_datasets_readers():
                    ds = datasets.load_dataset(kind, data_files=str(p), split="train", **kw)
            except Exception as e:  # noqa: BLE001 - any failure of the table reader
                if kind != "json":
                    raise JaxalignError(f"{source}: cannot read this {kind} file ({_first_line(e)})") from None
                ds = None
            if (ds is not None and p.suffix.lower() == ".json" and ds.num_rows == 1
                    and len(ds.column_names) == 1 and isinstance(ds[0][ds.column_names[0]], list)):
                # {"data": [rows...]}: the rows are in the one list field
                try:
                    with _quiet_datasets_readers():
                        ds = datasets.load_dataset(kind, data_files=str(p), split="train",
                                                   field=ds.column_names[0], **kw)
                except Exception:  # noqa: BLE001
                    ds = None
            if ds is not None and not _valid_table(ds):
                # pyarrow's JSON reader lets bytes that are not UTF-8 into string columns (reading
                # the row fails later); the line reader below names the row and field instead.
                if kind != "json":
                    raise JaxalignError(f"{source}: this {kind} file has text that is not valid UTF-8")
                ds = None
            if kind == "json" and (ds is None or _has_json_feature(ds.features)):
                # A column mixing strings and lists (plain and conversational rows) gets datasets'
                # Json type, which parses strings again (" 3." -> 3.0, "true" -> True): read the
                # rows as written instead.
                return _read_jsonl(p) if p.suffix.lower() != ".json" else _read_json(p)
            return ds
        if p.is_dir():
            if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file() \
                    or (p / "state.json").is_file():
                if subset is not None:
                    raise JaxalignError(f"config key 'data.subset': {source} is a save_to_disk directory, "
                                        "which has no subsets")
                ds = datasets.load_from_disk(str(p))
                if isinstance(ds, datasets.DatasetDict):
                    if split not in ds:
                        raise JaxalignError(f"{source}: no split {split!r} (available splits: {', '.join(ds)}); "
                                            f"name one as {source}:SPLIT")
                    ds = ds[split]
                return ds
            return load_split(str(p), split, subset, str(source), cache_dir=cache_dir)
        hub = parse_hub_id(source)
        if hub is None:
            raise JaxalignError(f"{source}: no such file or directory")
        return hub_rows(str(source), hub[0], hub[1], split, subset, cache_dir)
    except JaxalignError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types; report one line
        raise JaxalignError(f"{source}: cannot load the dataset ({_first_line(e)})") from None


def load_examples(source, fmt: str = "auto", split: str = "train", skip_invalid_rows: bool = False,
                  cache_dir: str | None = None, subset: str | None = None,
                  columns: dict | None = None) -> tuple[list, list[str]]:
    """:func:`load_dataset_rows`, :func:`~jaxalign.data.sources.map_columns` then
    :func:`check_rows`: ``(examples, skip_reasons)``."""
    from jaxalign.data.sources import map_columns

    rows = map_columns(load_dataset_rows(source, split, cache_dir, subset), columns, str(source))
    return check_rows(rows, fmt, str(source), skip_invalid_rows)
