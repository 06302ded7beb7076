"""Fixtures for the data tests: the shipped tiny tokenizer and file writers for every format."""

from __future__ import annotations

import csv
import json

import pytest


@pytest.fixture(scope="session")
def tok():
    from transformers import AutoTokenizer

    from jaxalign.data import tiny_tokenizer_path

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_path()), local_files_only=True)


def write_rows(rows: list[dict], path, kind: str):
    """Write ``rows`` as ``kind`` (jsonl, json, parquet, csv) at ``path``; lists go to CSV as JSON."""
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path))
    elif kind == "csv":
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    else:
        raise ValueError(kind)
    return path
