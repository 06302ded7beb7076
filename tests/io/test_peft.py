"""jaxalign.io.peft: the adapter jaxalign writes is what ``peft.PeftModel.from_pretrained`` loads
onto the transformers base (same logits), and a PEFT adapter loads back into jaxalign; bad
adapter directories are errors that name the file and the field."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxalign.config.schema import LoraSpec
from jaxalign.errors import JaxalignError
from jaxalign.io.load import save_model
from jaxalign.io.peft import load_peft, read_peft_config, save_peft
from jaxalign.models import lora
from jaxalign.models.config import ModelConfig
from jaxalign.models.llama import init_model

CFG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)
IDS = (np.arange(24).reshape(2, 12) * 7) % 97


def _trained(targets=None):
    """A model with nonzero adapters (as after training) on ``targets`` (default: all seven)."""
    spec = LoraSpec(rank=4, alpha=8) if targets is None else LoraSpec(rank=4, alpha=8, targets=targets)
    model = lora.add_lora(init_model(CFG, seed=0), spec, seed=1)
    for i, (_, lin) in enumerate(lora.targeted(model)):
        if lin.lora_b is not None:
            lin.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(i), lin.lora_b.shape)
    return model


@pytest.mark.parametrize("targets", [None, ["q_proj", "v_proj", "down_proj"]])
def test_peft_loads_the_adapter_onto_the_transformers_base(tmp_path, targets):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model = _trained(targets)
    save_model(init_model(CFG, seed=0), tmp_path / "base")  # the base without adapters
    save_peft(model, tmp_path / "adapter")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager",
                                                             dtype=torch.float32)
    with torch.no_grad():
        plain = base(input_ids=torch.tensor(IDS)).logits.numpy()
    tuned = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        got = tuned(input_ids=torch.tensor(IDS)).logits.numpy()
    want = np.asarray(model(IDS))
    assert np.abs(want - plain).max() > 1e-2  # the adapter matters, so the match below means something
    assert np.abs(got - want).max() < 1e-4


def test_a_saved_adapter_loads_back(tmp_path):
    model = _trained(["k_proj", "up_proj"])
    save_peft(model, tmp_path)
    cfg = read_peft_config(tmp_path)
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["target_modules"] == ["k_proj", "up_proj"]
    fresh = lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=4, alpha=8, targets=cfg["target_modules"]), seed=9)
    assert np.abs(np.asarray(fresh(IDS)) - np.asarray(model(IDS))).max() > 1e-2
    load_peft(fresh, tmp_path)
    np.testing.assert_array_equal(np.asarray(fresh(IDS)), np.asarray(model(IDS)))


def test_bad_adapter_directories_name_the_problem(tmp_path):
    with pytest.raises(JaxalignError, match="adapter_config.json"):
        read_peft_config(tmp_path)
    save_peft(_trained(["q_proj"]), tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(dict(cfg, use_rslora=True)))
    with pytest.raises(JaxalignError, match="use_rslora"):
        read_peft_config(tmp_path)
    wider = lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=4, targets=["q_proj", "o_proj"]), seed=1)
    with pytest.raises(JaxalignError, match="o_proj.lora_A.weight' is missing"):
        load_peft(wider, tmp_path)
    narrower = lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=2, targets=["q_proj"]), seed=1)
    with pytest.raises(JaxalignError, match="has shape"):
        load_peft(narrower, tmp_path)


def _trained_rm():
    """A reward model with nonzero adapters and a trained (random) head."""
    from jaxalign.models.heads import scalar_head_from_lm

    return scalar_head_from_lm(_trained(["q_proj", "v_proj", "up_proj"]), seed=5)


def test_peft_loads_a_reward_model_adapter_and_its_head(tmp_path):
    """A reward model's adapter (``SEQ_CLS``: LoRA tensors + the ``score`` head as a module to
    save) loaded by PEFT onto ``AutoModelForSequenceClassification`` of the base gives
    jaxalign's scores; without the head's tensor the scores would be the base's fresh head's."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    rm = _trained_rm()
    save_model(init_model(CFG, seed=0), tmp_path / "base")
    save_peft(rm, tmp_path / "adapter")
    cfg = read_peft_config(tmp_path / "adapter")
    assert cfg["task_type"] == "SEQ_CLS" and cfg["modules_to_save"] == ["score"]
    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", num_labels=1, pad_token_id=96, attn_implementation="eager", dtype=torch.float32)
    tuned = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        got = tuned(input_ids=torch.tensor(IDS)).logits[:, 0].numpy()
    want = np.asarray(rm(IDS, np.ones_like(IDS)))
    assert np.abs(want).max() > 1e-2
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_a_reward_model_adapter_loads_back_with_its_head(tmp_path):
    """jaxalign reads its own reward-model adapter back (adapters, then the head once the reward
    model is built around the LM, as ``rm`` does); an LM cannot take the head silently."""
    from jaxalign.io.peft import load_peft_head
    from jaxalign.models.heads import scalar_head_from_lm

    rm = _trained_rm()
    save_peft(rm, tmp_path)
    lm = lora.add_lora(init_model(CFG, seed=0), LoraSpec(rank=4, alpha=8, targets=["q_proj", "v_proj", "up_proj"]),
                       seed=9)
    with pytest.raises(JaxalignError, match="score.weight"):
        load_peft(lm, tmp_path)
    load_peft(lm, tmp_path, skip_head=True)
    fresh = scalar_head_from_lm(lm, seed=11)
    mask = np.ones_like(IDS)
    assert np.abs(np.asarray(fresh(IDS, mask)) - np.asarray(rm(IDS, mask))).max() > 1e-3
    assert load_peft_head(fresh, tmp_path)
    np.testing.assert_array_equal(np.asarray(fresh(IDS, mask)), np.asarray(rm(IDS, mask)))
