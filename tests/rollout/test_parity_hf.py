"""Greedy generation equals transformers' ``generate(do_sample=False)`` token for token:
tiny random models of every supported family, and the real SmolLM2-135M-Instruct GGUF."""

import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.io.hf import load_hf
from jaxalign.rollout import generate, pad_prompts

from ..models.hf_fixtures import make_hf_model

torch = pytest.importorskip("torch")

T_NEW = 16
PAD = 0


def hf_greedy(model, ids, mask, *, max_new_tokens, eos, pad):
    """transformers' greedy continuation [B, max_new_tokens], padded with ``pad`` after a stop."""
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                             attention_mask=torch.tensor(mask, dtype=torch.long),
                             max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=False,
                             num_beams=1, eos_token_id=list(eos), pad_token_id=pad,
                             temperature=None, top_k=None, top_p=None)
    out = out[:, ids.shape[1]:].numpy()
    full = np.full((ids.shape[0], max_new_tokens), pad, out.dtype)
    full[:, :out.shape[1]] = out
    return full


@pytest.mark.parametrize("kind", ["llama", "llama_tied", "qwen2", "qwen2_window", "mistral_window", "qwen3", "qwen3_window",
                                  "gemma2", "gemma3", "gemma3_pattern", "llama_yarn", "llama_dynamic"])
def test_greedy_equals_transformers_tiny(kind, tmp_path):
    hf = make_hf_model(kind, tmp_path, seed=1)
    model = load_hf(tmp_path)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 97, n).tolist() for n in (3, 9, 1, 6)]
    ids, mask = pad_prompts(prompts, PAD, buckets=None)
    free = generate(model, ids, mask, None, greedy=True, max_new_tokens=T_NEW, eos_token_ids=(),
                    pad_token_id=PAD)
    # an EOS that the greedy continuations produce in some rows: stopping is compared too
    comp = np.asarray(free.completion_ids)
    counts = {int(t): sum(t in row for row in comp) for t in np.unique(comp)}
    eos = max(counts, key=lambda t: (0 < counts[t] < len(comp), counts[t]))
    r = generate(model, ids, mask, None, greedy=True, max_new_tokens=T_NEW, eos_token_ids=[eos],
                 pad_token_id=PAD)
    ref = hf_greedy(hf, ids, mask, max_new_tokens=T_NEW, eos=[eos], pad=PAD)
    np.testing.assert_array_equal(np.asarray(r.completion_ids), ref)
    assert np.asarray(r.finished).any()


@pytest.mark.slow
@pytest.mark.real_model
def test_greedy_equals_transformers_smollm2():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    try:
        from jaxalign.io.paths import resolve_model_path
        import jaxalign.io.gguf  # noqa: F401
    except ImportError:
        pytest.skip("jaxalign.io.gguf is not available")
    try:
        path = resolve_model_path("smollm2-135m-instruct")
    except JaxalignError as e:
        pytest.skip(str(e))

    import jaxalign
    from jaxalign.io.tokenizer import eos_token_ids
    from jaxalign.rollout.text import encode_prompts

    tok = jaxalign.load_tokenizer(path)
    model = jaxalign.load_model(path)
    eos = eos_token_ids(tok)
    questions = ["What is the capital of France?", "Write a haiku about the sea.",
                 "List three prime numbers."]
    ids, mask = pad_prompts(encode_prompts(tok, questions, chat=True), tok.pad_token_id, buckets=None)
    r = generate(model, ids, mask, None, greedy=True, max_new_tokens=32, eos_token_ids=eos,
                 pad_token_id=tok.pad_token_id)

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ref = hf_greedy(hf, ids, mask, max_new_tokens=32, eos=eos, pad=tok.pad_token_id)
    got = np.asarray(r.completion_ids)
    np.testing.assert_array_equal(got, ref)
    assert "Paris" in tok.decode(got[0][np.asarray(r.generated_mask[0]) > 0])
