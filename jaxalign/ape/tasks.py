"""Instruction-induction tasks: JSONL rows ``{"input": ..., "output": ...}``, split into the rows
APE may look at (demonstrations and scoring) and held-out rows it never sees.

Three small tasks ship with jaxalign (written for the project, 100 pairs each, shuffled once):
``antonyms`` (a word -> its opposite), ``plural`` (a noun -> its plural, irregular ones
included) and ``sentiment`` (a review sentence -> ``positive`` / ``negative``).
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

from jaxalign.errors import JaxalignError

# The human-written instruction of each shipped task: the first row of the results table.
HUMAN = {
    "antonyms": "Write a word that means the opposite of the input word.",
    "plural": "Write the plural form of the input noun.",
    "sentiment": "Classify the sentiment of the review sentence as positive or negative.",
}


@dataclasses.dataclass
class Task:
    """A task: its name, every row as ``(input, output)``, and a human instruction (or None)."""

    name: str
    rows: list[tuple[str, str]]
    human: str | None = None

    def split(self, train_size: int, heldout_size: int | None = None):
        """``(train, heldout)``: the first ``train_size`` rows and (at most ``heldout_size`` of) the rest."""
        if train_size >= len(self.rows):
            raise JaxalignError(f"config key 'ape.train_size': {train_size} leaves no held-out rows in task "
                                f"{self.name!r} ({len(self.rows)} rows)")
        held = self.rows[train_size:]
        return self.rows[:train_size], held[:heldout_size] if heldout_size else held


def shipped_task_path(name: str) -> Path:
    """The JSONL file of shipped task ``name``."""
    return Path(str(resources.files("jaxalign") / "data" / "shipped" / "ape" / f"{name}.jsonl"))


def read_rows(path) -> list[tuple[str, str]]:
    """``(input, output)`` pairs of a JSONL file; a bad row is an error naming the file, line and field."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JaxalignError(f"{path}: no such task file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise JaxalignError(f"{path}: cannot read ({e})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise JaxalignError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise JaxalignError(f"{path}, line {n}: expected an object with 'input' and 'output'")
        for field in ("input", "output"):
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise JaxalignError(f"{path}, line {n}: field {field!r} must be a non-empty string")
        rows.append((row["input"], row["output"]))
    if not rows:
        raise JaxalignError(f"{path}: no rows")
    return rows


def load_task(spec: str) -> Task:
    """A task from a shipped name (``antonyms``) or a file (``my.jsonl`` or ``my.jsonl::instruction``)."""
    if spec in HUMAN:
        return Task(spec, read_rows(shipped_task_path(spec)), HUMAN[spec])
    path, _, human = spec.partition("::")
    if not path.endswith(".jsonl"):
        raise JaxalignError(f"config key 'ape.tasks': {spec!r} is neither a shipped task "
                            f"({', '.join(HUMAN)}) nor a .jsonl file")
    return Task(Path(path).stem, read_rows(path), human.strip() or None)
