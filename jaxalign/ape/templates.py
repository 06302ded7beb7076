"""The prompt templates of APE (Zhou et al. 2022, arXiv:2211.01910, Figure 1 and Appendix) as
chat messages, and the text clean-ups around them. Pure string functions.

- forward-mode proposal: demonstrations, then "The instruction was" completed by the model
  (the assistant turn is prefilled with :data:`PROPOSAL_PREFIX`);
- resampling (iterative Monte-Carlo search): "Generate a variation of the following instruction
  while keeping the semantic meaning";
- evaluation: "Instruction: ...  Input: ...  Output:" (no instruction: the input alone).
"""

from __future__ import annotations

import re
from typing import Sequence

PROPOSAL_PREFIX = "The instruction was to"
VARIATION_PREFIX = "Instruction:"


def proposal_user(demos: Sequence[tuple[str, str]]) -> str:
    """The user turn of a forward-mode proposal: the paper's template around ``demos``."""
    pairs = "\n\n".join(f"Input: {x}\nOutput: {y}" for x, y in demos)
    return ("I gave a friend an instruction and some inputs. The friend read the instruction and "
            f"wrote an output for every one of the inputs. Here are the input-output pairs:\n\n{pairs}\n\n"
            "What was the instruction? Answer in one sentence.")


def variation_user(instruction: str) -> str:
    """The user turn asking for a variation of ``instruction`` (the paper's resampling template)."""
    return ("Generate a variation of the following instruction while keeping the semantic meaning.\n\n"
            f"Input: {instruction}\n\nOutput:")


def eval_user(instruction: str | None, x: str) -> str:
    """The user turn that the desired output answers; ``instruction`` None or empty: the input alone."""
    if instruction:
        return f"Instruction: {instruction}\n\nInput: {x}\nOutput:"
    return f"Input: {x}\nOutput:"


# A list marker a model puts before its answer: "- ", "* ", "• ", "1. ", "1) ", "(1) ".
_BULLET = re.compile(r"^(?:[-*•]|\(?\d{1,3}[.)])\s+")


def clean_instruction(text: str, prefix: str = "") -> str:
    """A generated continuation of ``prefix`` as an instruction: its first line, whitespace
    collapsed, a leading bullet or list number and quotes stripped, first letter capitalised, ending with a full stop; ``""`` when
    nothing is left. ``"write the opposite word"`` (after "The instruction was to") ->
    ``"Write the opposite word."``"""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = " ".join(line.split()).strip(" \"'`")
    line = _BULLET.sub("", line).strip(" \"'`")
    if prefix.endswith(" to") and line.lower().startswith("to "):
        line = line[3:]
    line = line.rstrip(" ,;:")
    if not re.search(r"\w", line):
        return ""
    line = line[0].upper() + line[1:]
    return line if line.endswith((".", "!", "?")) else line + "."


def normalise_answer(text: str) -> str:
    """The form exact match compares: the first line, lower case, without surrounding whitespace,
    quotes or a final full stop (the paper's execution accuracy on instruction induction)."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    return line.strip().strip("\"'`").rstrip(".!").strip().lower()
