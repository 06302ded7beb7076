"""Write jaxalign's shipped tiny datasets and tiny tokenizer (deterministic: no randomness).

    python scripts/make_tiny_data.py            # writes jaxalign/data/shipped/
    python scripts/make_tiny_data.py --out DIR  # somewhere else (the tests compare the two)

Files (all texts written for jaxalign, ASCII, every text field < 48 tokens of the tiny tokenizer):

- ``tokenizer_tiny/``: byte-level BPE without merges (``tokenizers``), saved as a
  ``PreTrainedTokenizerFast``: ids 0-3 are ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``
  (EOS), ``<|pad|>`` (pad); byte ``b`` is id ``b + 4``; 260 tokens; ChatML chat template.
- ``sft_tiny.jsonl``: 64 prompt/completion rows (48 "Q: ...\\nA:" strings, 16 conversations).
- ``preference_tiny.jsonl``: 64 rows; chosen replies are positive and polite, rejected ones
  negative and rude (the words never overlap), so DPO / a reward model separates them.
- ``ranked_tiny.jsonl``: 48 rows, K = 3 or 4 responses; a response's rank is set by how many
  times it says "good" (more is better); responses are stored shuffled, ``ranking`` best first.
- ``prompts_tiny.jsonl``: 64 prompt-only rows (for PPO / GRPO / RAFT / online DPO).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# ChatML as in SmolLM2-Instruct, without its default system prompt (keeps tiny sequences short).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TOPICS = ["the movie", "the food", "the weather", "the book", "the game", "the park", "the music",
          "the trip", "the class", "the hotel", "the party", "the show", "the garden", "the beach",
          "the concert", "the museum"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what the ByteLevel pre-tokenizer emits)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer():
    """The tiny tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    b2u = _bytes_to_unicode()
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|pad|>",
                                  bos_token=None, unk_token=None, model_max_length=2048)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def sft_rows() -> list[dict]:
    colors = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("sun", "yellow"), ("coal", "black"),
              ("blood", "red"), ("sea", "blue"), ("leaf", "green"), ("milk", "white"), ("lemon", "yellow"),
              ("night", "black"), ("cherry", "red")]
    sums = [(1, 2), (2, 3), (3, 4), (4, 4), (5, 2), (6, 3), (2, 7), (8, 1), (3, 3), (5, 5), (7, 2), (6, 6)]
    words = ["cat", "dog", "sun", "tree", "book", "lamp", "star", "fish", "bird", "rain", "door", "moon"]
    sounds = [("cat", "meow"), ("dog", "woof"), ("cow", "moo"), ("duck", "quack"), ("sheep", "baa"),
              ("owl", "hoot"), ("pig", "oink"), ("horse", "neigh"), ("frog", "croak"), ("lion", "roar"),
              ("bee", "buzz"), ("snake", "hiss")]
    rows = []
    rows += [{"prompt": f"Q: What color is the {t}?\nA:", "completion": f" {c}."} for t, c in colors]
    rows += [{"prompt": f"Q: What is {a} plus {b}?\nA:", "completion": f" {a + b}."} for a, b in sums]
    rows += [{"prompt": f"Q: Spell {w} backwards.\nA:", "completion": f" {w[::-1]}."} for w in words]
    rows += [{"prompt": f"Q: What does a {a} say?\nA:", "completion": f" {s}."} for a, s in sounds]
    names = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lena",
             "Milo", "Nora", "Omar", "Pia"]
    for i, name in enumerate(names):
        prompt = [{"role": "user", "content": f"Say hello to {name}."}]
        if i % 2:
            prompt.insert(0, {"role": "system", "content": "You are kind."})
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": f"Hello, {name}!"}]})
    return rows


POSITIVE = ["It was wonderful, thank you", "I loved it, thanks", "It was great fun", "It was lovely, thank you",
            "I really enjoyed it", "It was a delight", "It was excellent, thanks", "I had a happy time"]
NEGATIVE = ["It was awful", "I hated it", "It was terrible", "It was boring and bad", "Ugh, it was the worst",
            "It was dreadful", "I disliked it a lot", "It was a horrible mess"]
QUESTIONS = ["How was {t}?", "What did you think of {t}?", "Tell me about {t}.", "Any thoughts on {t}?"]


def preference_rows() -> list[dict]:
    rows = []
    for q, question in enumerate(QUESTIONS):
        for t, topic in enumerate(TOPICS):
            i = q * len(TOPICS) + t
            rows.append({"prompt": question.format(t=topic), "chosen": f" {POSITIVE[i % 8]}!",
                         "rejected": f" {NEGATIVE[(3 * i + q) % 8]}."})
    return rows


FILLERS = ["nice", "fine", "calm", "warm", "neat", "okay"]
DESCRIBE = ["Describe {t}.", "How would you rate {t}?", "Say something about {t}."]
# Fixed shuffles of the responses (position in the row -> how many "good"s rank it).
ORDERS = {3: [[2, 0, 1], [1, 2, 0], [0, 2, 1], [2, 1, 0]], 4: [[3, 1, 0, 2], [1, 3, 2, 0], [2, 0, 3, 1],
                                                                 [0, 2, 1, 3]]}


def ranked_rows() -> list[dict]:
    rows = []
    for d, template in enumerate(DESCRIBE):
        for t, topic in enumerate(TOPICS):
            i = d * len(TOPICS) + t
            k = 3 if i % 2 == 0 else 4
            best_first = []
            for rank in range(k):  # rank 0 = best = the most "good"s
                goods = ["good"] * (k - 1 - rank)
                best_first.append(f"{topic.capitalize()} is " + " ".join(goods + [FILLERS[(i + rank) % 6]]) + ".")
            order = ORDERS[k][i % 4]  # responses[j] = best_first[order[j]]
            responses = [best_first[r] for r in order]
            ranking = sorted(range(k), key=lambda j: order[j])
            rows.append({"prompt": template.format(t=topic), "responses": responses, "ranking": ranking})
    return rows


FRAMES = ["Write a sentence about {t}.", "Continue the story: {T} was", "Describe {t} in a few words.",
          "What do you think of {t}?"]


def prompt_rows() -> list[dict]:
    return [{"prompt": f.format(t=topic, T=topic.capitalize())} for f in FRAMES for topic in TOPICS]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=True, sort_keys=False) + "\n" for r in rows))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "jaxalign" / "data" / "shipped"
    ap.add_argument("--out", type=Path, default=default)
    args = ap.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "sft_tiny.jsonl", sft_rows())
    _write_jsonl(out / "preference_tiny.jsonl", preference_rows())
    _write_jsonl(out / "ranked_tiny.jsonl", ranked_rows())
    _write_jsonl(out / "prompts_tiny.jsonl", prompt_rows())
    tok_dir = out / "tokenizer_tiny"
    build_tokenizer().save_pretrained(str(tok_dir))
    # The class name every transformers release knows (5.x aliases it to its TokenizersBackend).
    cfg_path = tok_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
