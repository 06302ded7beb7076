"""jaxalign.io.params: loading a model refuses weights that are not floating point (instead of
casting them) or not finite (instead of finding them at the first checkpoint save), with one
line naming the file and the tensor."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxalign import init_model, load_model, save_model
from jaxalign.errors import JaxalignError
from jaxalign.models.config import ModelConfig
from tests.fuzz_helpers import one_error_line

CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    save_model(init_model(CFG, seed=0), d)
    return d


def _replace(src, dst, name, value):
    """A copy of the HF dir ``src`` in ``dst`` whose tensor ``name`` is ``value(old)``."""
    import shutil

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(f)
        if name in tensors:
            tensors[name] = value(tensors[name])
            save_file(tensors, str(f), metadata={"format": "pt"})
            return f
    raise KeyError(name)


@pytest.mark.parametrize("name", ["model.norm.weight", "model.layers.1.mlp.up_proj.weight"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_an_integer_weight_is_refused_not_cast(model_dir, tmp_path, name, dtype):
    f = _replace(model_dir, tmp_path / "m", name, lambda w: np.ones(w.shape, dtype))
    with pytest.raises(JaxalignError) as e:
        load_model(tmp_path / "m")
    one_error_line(e.value, f"{f}: tensor {name!r} has dtype {np.dtype(dtype)}, expected floating-point weights")


def test_the_error_names_the_shard_file_and_holds_on_a_mesh(tmp_path):
    """A sharded HF dir: the file named is the shard holding the tensor; a mesh load (each device
    reads its own slice) refuses it the same way."""
    from jaxalign.parallel import make_mesh

    src = tmp_path / "sharded"
    save_model(init_model(CFG, seed=0), src, max_shard_bytes=20_000)
    name = "model.layers.0.self_attn.q_proj.weight"
    f = _replace(src, tmp_path / "m", name, lambda w: w.astype(np.int32))
    assert f.name != "model.safetensors" and len(list((tmp_path / "m").glob("*.safetensors"))) > 1
    with pytest.raises(JaxalignError) as e:
        load_model(tmp_path / "m", mesh=make_mesh())
    one_error_line(e.value, f"{f}: tensor {name!r} has dtype int32")


def test_float_weights_of_any_width_still_load(model_dir, tmp_path):
    name = "model.norm.weight"
    _replace(model_dir, tmp_path / "m", name, lambda w: w.astype(np.float16))
    got = load_model(tmp_path / "m")
    want = load_file(model_dir / "model.safetensors")[name].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(got.norm.weight[...]), want)


def _poison(value):
    def f(w):
        w = w.copy()
        w.reshape(-1)[w.size // 2] = value
        return w
    return f


@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "model.layers.1.self_attn.o_proj.weight"])
@pytest.mark.parametrize("value, what", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_a_non_finite_weight_is_refused_at_load(model_dir, tmp_path, name, value, what):
    f = _replace(model_dir, tmp_path / "m", name, _poison(value))
    with pytest.raises(JaxalignError) as e:
        load_model(tmp_path / "m")
    assert one_error_line(e.value) == (f"{f}: tensor {name!r} holds {what} values; refusing non-finite weights "
                                       "(a damaged or badly converted file)")


def test_a_non_finite_weight_is_refused_on_a_mesh_and_in_bfloat16(model_dir, tmp_path):
    from jaxalign.parallel import make_mesh

    name = "model.layers.0.mlp.down_proj.weight"
    f = _replace(model_dir, tmp_path / "m", name, _poison(np.nan))
    for kw in ({"mesh": make_mesh()}, {"dtype": "bfloat16"}):
        with pytest.raises(JaxalignError) as e:
            load_model(tmp_path / "m", **kw)
        one_error_line(e.value, f"{f}: tensor {name!r} holds NaN values")


def test_a_non_finite_gguf_weight_is_refused_at_load(tmp_path):
    pytest.importorskip("gguf")
    from tests.io.test_gguf import tiny_hf_tensors, write_gguf

    hf = tiny_hf_tensors()
    name = "model.layers.0.post_attention_layernorm.weight"
    hf[name] = _poison(np.inf)(hf[name])
    path = write_gguf(tmp_path / "inf.gguf", hf)
    with pytest.raises(JaxalignError) as e:
        load_model(path)
    one_error_line(e.value, f"{path}: tensor {name!r} holds Inf values")
