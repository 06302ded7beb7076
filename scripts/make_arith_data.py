"""Write jaxalign's shipped arithmetic word problems (deterministic: no library randomness).

    python scripts/make_arith_data.py            # writes jaxalign/data/shipped/arith_*.jsonl
    python scripts/make_arith_data.py --out DIR  # somewhere else (the tests compare the two)

300 problems written for jaxalign from 10 templates (names, objects, quantities; one or two of
+, −, ×, ÷), each answer computed here. Rows are prompt-only and conversational, with the answer
as an extra column, for a verifiable reward (``reward: {kind: math}``)::

    {"prompt": [{"role": "user", "content": "Maya has 12 shells. ... Answer with a number."}],
     "answer": 17}

- ``arith_train.jsonl``: 240 problems; ``arith_heldout.jsonl``: 60 (every fifth problem of each
  template), so both splits hold every template in the same proportions. Answers are whole
  numbers from 1 to 199.

Quantities come from a fixed linear congruential generator (Numerical Recipes' constants), not
``random``, so the files are the same under every Python version.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PER_TEMPLATE = 30
HELD_OUT_EVERY = 5  # the j-th problem of a template is held out when j % 5 == 4
INSTRUCTION = "Answer with a number."

NAMES = ["Maya", "Tom", "Ana", "Omar", "Lena", "Ben", "Priya", "Kofi", "Sara", "Ivan", "Zoe", "Li", "Nina",
         "Sam", "Aisha", "Leo", "Mia", "Raj", "Eva", "Noah"]
THINGS = ["apples", "marbles", "stickers", "pencils", "cookies", "books", "shells", "cards", "stamps", "buttons",
          "eggs", "balloons", "coins", "crayons", "beads", "plums"]
ITEMS = ["notebook", "sandwich", "toy car", "ticket", "mug", "kite", "puzzle", "scarf"]


class _Lcg:
    """``x <- (1664525 x + 1013904223) mod 2^32``; ``int(lo, hi)`` from the high bits."""

    def __init__(self, seed: int):
        self.x = seed % 2**32

    def int(self, lo: int, hi: int) -> int:
        """A whole number in ``[lo, hi]``."""
        self.x = (1664525 * self.x + 1013904223) % 2**32
        return lo + (self.x >> 8) % (hi - lo + 1)

    def pick(self, seq):
        return seq[self.int(0, len(seq) - 1)]


def _problem(kind: int, r: _Lcg) -> tuple[str, int]:
    """``(text, answer)`` of template ``kind`` with quantities drawn from ``r``."""
    name, other = r.pick(NAMES), r.pick(NAMES)
    while other == name:
        other = r.pick(NAMES)
    t = r.pick(THINGS)
    if kind == 0:
        a, b = r.int(3, 60), r.int(2, 40)
        return f"{name} has {a} {t}. {name} gets {b} more {t}. How many {t} does {name} have now?", a + b
    if kind == 1:
        a = r.int(10, 90)
        b = r.int(1, a - 1)
        return f"{name} had {a} {t} and gave {b} of them to {other}. How many {t} does {name} have left?", a - b
    if kind == 2:
        a, b = r.int(2, 9), r.int(2, 12)
        return (f"{name} buys {a} bags of {t}. Each bag holds {b} {t}. How many {t} does {name} buy in all?",
                a * b)
    if kind == 3:
        a, b = r.int(2, 12), r.int(2, 8)
        return (f"{name} shares {a * b} {t} equally among {b} friends. How many {t} does each friend get?", a)
    if kind == 4:
        a, b = r.int(10, 50), r.int(2, 30)
        c = r.int(1, a + b - 1)
        return (f"{name} has {a} {t}, finds {b} more and then loses {c}. How many {t} does {name} have now?",
                a + b - c)
    if kind == 5:
        a, b, c = r.int(2, 8), r.int(3, 10), r.int(1, 9)
        return (f"{name} has {a} boxes with {b} {t} in each box and {c} loose {t}. How many {t} does {name} "
                "have altogether?", a * b + c)
    if kind == 6:
        item = r.pick(ITEMS)
        a, b = r.int(2, 9), r.int(2, 5)
        bill = next(x for x in (10, 20, 50, 100) if x > a * b)
        return (f"A {item} costs {a} dollars. {name} buys {b} of them and pays with a {bill}-dollar bill. "
                f"How many dollars of change does {name} get?", bill - a * b)
    if kind == 7:
        a, b = r.int(5, 20), r.int(2, 9)
        c = a * b + r.int(0, 60)
        return (f"A book has {c} pages. {name} reads {a} pages a day for {b} days. How many pages are left "
                "to read?", c - a * b)
    if kind == 8:
        a, b = r.int(2, 30), r.int(2, 30)
        return (f"{name} has {a} {t} and {other} has {b} {t}. How many {t} do they have together?", a + b)
    a = r.int(2, 20)
    k = r.int(2, 5)
    return (f"{other} has {a} {t}. {name} has {k} times as many {t} as {other}. How many {t} does {name} have?",
            a * k)


N_TEMPLATES = 10


def problems() -> list[tuple[int, dict]]:
    """``(j, row)`` for every problem, in the order made (round ``j`` makes one problem of each
    template); ``row``: ``{"prompt": [user message], "answer": int}``. No question repeats."""
    r, seen, out = _Lcg(2024), set(), []
    for j in range(PER_TEMPLATE):
        for kind in range(N_TEMPLATES):
            text, answer = _problem(kind, r)
            while text in seen:
                text, answer = _problem(kind, r)
            seen.add(text)
            assert 1 <= answer <= 199, (text, answer)
            out.append((j, {"prompt": [{"role": "user", "content": f"{text} {INSTRUCTION}"}], "answer": answer}))
    return out


def splits() -> tuple[list[dict], list[dict]]:
    """``(train, held_out)``: every fifth problem of each template is held out."""
    made = problems()
    held = [row for j, row in made if j % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [row for j, row in made if j % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    return train, held


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "jaxalign" / "data" / "shipped"
    ap.add_argument("--out", type=Path, default=default)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train, held = splits()
    _write_jsonl(args.out / "arith_train.jsonl", train)
    _write_jsonl(args.out / "arith_heldout.jsonl", held)
    print(f"wrote {len(train)} + {len(held)} problems to {args.out}")


if __name__ == "__main__":
    main()
