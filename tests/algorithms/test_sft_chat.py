"""SFT on conversational data: the loss covers the assistant turns only (sft.assistant_only_loss,
default true), sft.completion_only_loss, and data.chat_template. The expected masks come from
transformers' own ``return_assistant_tokens_mask`` on a ``{% generation %}``-marked template."""

from __future__ import annotations

import copy
import json

import jax
import numpy as np
import pytest

from tests.algorithms.conftest import SMALLEST_MODEL, tiny_cfg

# ChatML as the tiny tokenizer's template writes it, with and without generation markers; `sep`
# lets a test use another role separator, to see that data.chat_template is the one used.
HEAD = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + SEP }}"
PLAIN = HEAD + "{{ message['content'] + '<|im_end|>' + '\n' }}{% endfor %}" \
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant' + SEP }}{% endif %}"
MARKED = HEAD + ("{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
                 "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant' + SEP }}{% endif %}")


def template(kind: str, sep: str = "\n") -> str:
    return kind.replace("SEP", json.dumps(sep).replace('"', "'"))


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


CONVERSATIONS = [
    msgs(("system", "You are terse."), ("user", "2+2?"), ("assistant", "4")),
    msgs(("user", "Hello"), ("assistant", "Hi! How can I help?"), ("user", "A joke?"),
         ("assistant", "Cats purr.")),
    msgs(("system", "Be kind."), ("user", "hey"), ("assistant", "hello there"), ("user", "bye"),
         ("assistant", "bye!"), ("user", "ok")),
    msgs(("user", "Name a color."), ("assistant", "Blue.")),
]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from jaxalign.data import tiny_tokenizer_path

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_path()), local_files_only=True)


def reference(tok, chat_template, messages):
    t = copy.deepcopy(tok)
    t.chat_template = chat_template
    out = t.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.fixture
def chat_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    return path


def _examples(cfg):
    from jaxalign.algorithms import common
    from jaxalign.algorithms import data_setup

    tok = common.tokenizer_from(cfg)
    train, _ = data_setup.datasets_from(cfg, tok, ("sft",))
    return tok, sorted(train, key=lambda e: e["row"])


def test_reference_template_is_the_tiny_tokenizers(tok):
    """The templates written here render as the tiny tokenizer's own (so its reference holds)."""
    for c in CONVERSATIONS:
        t = copy.deepcopy(tok)
        t.chat_template = template(PLAIN)
        assert t.apply_chat_template(c, tokenize=False) == tok.apply_chat_template(c, tokenize=False)


def test_conversations_default_to_assistant_only_loss(tok, chat_file):
    cfg = tiny_cfg("sft", f"data.train={chat_file}", "data.eval_fraction=0.0")
    assert cfg.algo.assistant_only_loss is True and cfg.algo.completion_only_loss is True
    _, examples = _examples(cfg)
    for e, c in zip(examples, CONVERSATIONS):
        ids, mask = reference(tok, template(MARKED), c)
        # The final "\n" after the last <|im_end|> is not part of the example (as for completions).
        assert e["input_ids"].tolist() == ids[:-1]
        assert e["completion_mask"].tolist() == mask[:-1]
        assert sum(mask) > 0 and sum(mask) < len(mask) - 1


def test_assistant_only_loss_false_trains_on_every_token(chat_file):
    cfg = tiny_cfg("sft", f"data.train={chat_file}", "data.eval_fraction=0.0", "sft.assistant_only_loss=false")
    _, examples = _examples(cfg)
    for e in examples:
        assert e["completion_mask"].tolist() == [0] + [1] * (len(e["input_ids"]) - 1)


def test_completion_only_loss_false_trains_on_the_prompt_too():
    """On the shipped prompt/completion data (string and message prompts): a string prompt is
    trained on; a message prompt on its assistant turns (it has none here) unless
    sft.assistant_only_loss is false too."""
    from jaxalign.data import shipped_path

    rows = [json.loads(x) for x in shipped_path("sft_tiny.jsonl").read_text().splitlines() if x.strip()]
    on = _examples(tiny_cfg("sft", "data.eval_fraction=0.0"))[1]
    off = _examples(tiny_cfg("sft", "data.eval_fraction=0.0", "sft.completion_only_loss=false"))[1]
    every = _examples(tiny_cfg("sft", "data.eval_fraction=0.0", "sft.completion_only_loss=false",
                               "sft.assistant_only_loss=false"))[1]
    kinds = set()
    for a, b, c in zip(on, off, every):
        assert a["input_ids"].tolist() == b["input_ids"].tolist() == c["input_ids"].tolist()
        assert 0 < a["completion_mask"].sum() < len(a["input_ids"]) - 1
        all_after_first = [0] + [1] * (len(a["input_ids"]) - 1)
        assert c["completion_mask"].tolist() == all_after_first
        chat = isinstance(rows[a["row"]]["prompt"], list)
        kinds.add(chat)
        assert b["completion_mask"].tolist() == (a["completion_mask"].tolist() if chat else all_after_first)
    assert kinds == {True, False}


def test_data_chat_template_overrides_the_tokenizers(tok, chat_file, tmp_path):
    """A marked template with another role separator: the ids are that template's and the mask
    its own generation blocks' (through transformers)."""
    path = tmp_path / "marked.jinja"
    path.write_text(template(MARKED, ":\n"))
    cfg = tiny_cfg("sft", f"data.train={chat_file}", "data.eval_fraction=0.0", f"data.chat_template={path}")
    used, examples = _examples(cfg)
    assert used.chat_template == template(MARKED, ":\n")
    for e, c in zip(examples, CONVERSATIONS):
        ids, mask = reference(tok, template(MARKED, ":\n"), c)
        assert ids != reference(tok, template(MARKED), c)[0]
        assert e["input_ids"].tolist() == ids[:-1] and e["completion_mask"].tolist() == mask[:-1]


def test_missing_chat_template_file_is_a_config_error(chat_file, tmp_path):
    from jaxalign.algorithms import common
    from jaxalign.errors import JaxalignError

    cfg = tiny_cfg("sft", f"data.train={chat_file}", f"data.chat_template={tmp_path / 'nope.jinja'}")
    with pytest.raises(JaxalignError, match=r"^config key 'data.chat_template': .*nope.jinja: no such file"):
        common.tokenizer_from(cfg)


def test_sft_loss_is_the_mean_over_assistant_tokens(tok, chat_file):
    """The SFT loss of a batch of conversations is the mean NLL over exactly the reference
    assistant tokens: per-token log-probs from the model, averaged over transformers' mask,
    give the loss; averaged over every token (system and user too) they do not."""
    import flax.nnx as nnx

    from jaxalign.algorithms import common, sft
    from jaxalign.data import collate

    cfg = tiny_cfg("sft", f"data.train={chat_file}", "data.eval_fraction=0.0", "train.batch_size=2",
                   "train.steps=1", "mesh.fsdp=1", *SMALLEST_MODEL)
    job = sft.build_job(cfg)
    examples = sorted(job.train_batches.examples, key=lambda e: e["row"])
    batch = collate(examples, tok.pad_token_id)
    loss, _ = job.loss_fn(job.params, batch, job.frozen, jax.random.key(0), {})

    model = common.model_from(cfg, common.mesh_from(cfg), tok)  # the same seed: the same weights
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(job.params)))
    logps, _ = sft.completion_logps(model, batch)
    logps = np.asarray(logps, np.float64)
    ref = np.zeros_like(logps)
    for i, c in enumerate(CONVERSATIONS):
        mask = reference(tok, template(MARKED), c)[1][:-1]
        ref[i, : len(mask)] = mask
    ref[:, 0] = 0
    want = -(logps * ref).sum() / ref.sum()
    assert float(loss) == pytest.approx(want, rel=1e-5)
    every = np.asarray(batch["attention_mask"], np.float64)
    every[:, 0] = 0
    assert abs(-(logps * every).sum() / every.sum() - want) > 1e-3
