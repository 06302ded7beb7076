"""``jaxalign generate``: argument registration and the command itself.

    jaxalign generate --model PATH (--prompt TEXT ... | --prompts-file FILE) [--chat]
        [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--greedy]
        [--num-samples N] [--seed S] [--batch-size B] [--dtype D] [--json]

``jaxalign.cli`` registers the sub-command with :func:`add_generate_args` and calls
:func:`generate_cli`; every user error is a :class:`~jaxalign.errors.JaxalignError`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from jaxalign.errors import JaxalignError


def add_generate_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register ``generate``'s options on ``parser`` (a sub-parser); returns it."""
    parser.add_argument("--model", required=True,
                        help="HF dir, .gguf file, alias (smollm2-135m-instruct) or Hub id (org/name[@revision])")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", metavar="TEXT",
                     help="a prompt (repeat the option for several)")
    src.add_argument("--prompts-file", metavar="FILE",
                     help="one prompt per line, or .jsonl rows with a \"prompt\" field")
    parser.add_argument("--chat", action="store_true", help="render prompts with the chat template")
    parser.add_argument("--system", default=None, help="system message (with --chat)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding")
    parser.add_argument("--num-samples", type=int, default=1, help="completions per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per compiled call")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per completion instead of plain text")
    return parser


def read_prompts(path) -> list[str]:
    """Prompts from a text file (one per non-empty line) or a JSON Lines file (``"prompt"``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JaxalignError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise JaxalignError(f"{path}: cannot read ({e})") from None
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise JaxalignError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
            prompt = row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(prompt, str):
                raise JaxalignError(f"{path}, line {n}: field 'prompt' must be a string")
            prompts.append(prompt)
        else:
            prompts.append(line)
    if not prompts:
        raise JaxalignError(f"{path}: no prompts")
    return prompts


def _check(args) -> None:
    if args.max_new_tokens < 1:
        raise JaxalignError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise JaxalignError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise JaxalignError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise JaxalignError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.num_samples < 1:
        raise JaxalignError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.batch_size < 1:
        raise JaxalignError(f"--batch-size must be >= 1, got {args.batch_size}")


def generate_cli(args: argparse.Namespace) -> int:
    """Run ``jaxalign generate`` with parsed ``args``; prints completions, returns 0."""
    import numpy as np

    from jaxalign.io.load import load_model, load_tokenizer
    from jaxalign.rollout.text import generate_text

    _check(args)
    prompts = read_prompts(args.prompts_file) if args.prompts_file else list(args.prompt)
    if any(not p.strip() for p in prompts) and not args.chat:
        raise JaxalignError("empty prompt")
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=args.dtype)
    start = time.perf_counter()
    texts, rollouts = generate_text(
        model, tokenizer, prompts, key=args.seed, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
        num_samples=args.num_samples, chat=args.chat, system=args.system,
        batch_size=args.batch_size, return_rollouts=True)
    seconds = time.perf_counter() - start
    lengths = np.concatenate([np.asarray(r.lengths) for r in rollouts])
    finished = np.concatenate([np.asarray(r.finished) for r in rollouts])
    for i, text in enumerate(texts):
        p, s = divmod(i, args.num_samples)
        if args.json:
            print(json.dumps({"prompt": prompts[p], "sample": s, "completion": text,
                              "tokens": int(lengths[i]), "finished": bool(finished[i])}))
        else:
            if len(texts) > 1:
                head = f"[{p}]" if args.num_samples == 1 else f"[{p}.{s}]"
                print(f"=== {head} {prompts[p]!r}")
            print(text)
    print(f"{int(lengths.sum())} tokens in {seconds:.1f} s (compilation included)", file=sys.stderr)
    return 0
