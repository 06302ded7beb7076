"""Run config: YAML + overrides, strict keys with suggestions, type checks."""

import dataclasses

import pytest

from jaxalign.algorithms.registry import ALGORITHMS, register
from jaxalign.config import load_config
from jaxalign.errors import JaxalignError


@dataclasses.dataclass
class _Algo:
    beta: float = 0.1
    loss_type: str = "sigmoid"



@pytest.fixture(autouse=True, scope="module")
def _registered():
    """The test algorithm is in the registry for this module's tests only."""
    register("_test", _Algo)
    yield
    ALGORITHMS.pop("_test", None)


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    p = _write(tmp_path, "algorithm: _test\noptim:\n  lr: 1e-5\n_test:\n  beta: 0.5\n")
    cfg = load_config(p, ["train.batch_size=16", "_test.loss_type=ipo", "optim.lr=3e-4"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.batch_size == 16
    assert cfg.algo.beta == 0.5 and cfg.algo.loss_type == "ipo"
    assert cfg.to_dict()["_test"]["loss_type"] == "ipo"


def test_model_config_floats_written_without_a_dot_are_floats(tmp_path):
    """YAML 1.1 reads ``1e-5`` as a string; model.config's float fields must reach ModelConfig
    as floats (a string eps made the first RMSNorm fail inside the jitted step)."""
    p = _write(tmp_path, "algorithm: _test\nmodel:\n  init: random\n  config:\n"
                         "    hidden_size: 32\n    rms_norm_eps: 1e-5\n    rope_theta: 1e4\n")
    cfg = load_config(p, [])
    assert cfg.model.config["rms_norm_eps"] == 1e-5 and isinstance(cfg.model.config["rms_norm_eps"], float)
    assert cfg.model.config["rope_theta"] == 1e4 and isinstance(cfg.model.config["rope_theta"], float)
    cfg = load_config(p, ['model.config={"hidden_size": 32, "rms_norm_eps": 1e-06}'])
    assert cfg.model.config["rms_norm_eps"] == 1e-6 and isinstance(cfg.model.config["rms_norm_eps"], float)


def test_model_path_with_random_init_is_refused(tmp_path):
    """model.init: random never reads model.path; together they trained a random model, exit 0."""
    p = _write(tmp_path, "algorithm: _test\nmodel:\n  path: smollm2-135m-instruct\n")
    expected = ("config key 'model.path': 'smollm2-135m-instruct' is set but 'model.init' is 'random', which "
                "ignores it; set model.init=pretrained to load it, or remove model.path (model.tokenizer names "
                "a tokenizer)")
    with pytest.raises(JaxalignError) as e:
        load_config(p, ["model.init=random"])
    assert str(e.value) == expected
    assert load_config(p, []).model.path == "smollm2-135m-instruct"  # pretrained (the default) reads it
    assert load_config(p, ["model.init=random", "model.path=null"]).model.path is None


def test_unknown_key_suggests_nearest(tmp_path):
    p = _write(tmp_path, "algorithm: _test\noptim:\n  learning_rat: 1.0\n")
    with pytest.raises(JaxalignError, match="optim.learning_rat"):
        load_config(p)
    with pytest.raises(JaxalignError, match=r"did you mean 'train.batch_size'"):
        load_config(None, ["train.batchsize=4"], "_test")
    with pytest.raises(JaxalignError, match=r"did you mean '_test.beta'"):
        load_config(None, ["_test.betta=4"], "_test")


def test_type_errors_name_the_key():
    with pytest.raises(JaxalignError, match="train.batch_size.*expected int"):
        load_config(None, ["train.batch_size=many"], "_test")
    with pytest.raises(JaxalignError, match="optim.lr.*expected float"):
        load_config(None, ["optim.lr=fast"], "_test")
    with pytest.raises(JaxalignError, match="unknown algorithm"):
        load_config(None, [], "nope")


def test_bad_files(tmp_path):
    with pytest.raises(JaxalignError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(JaxalignError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(JaxalignError, match="algorithm: 'dpo'"):
        load_config(_write(tmp_path, "algorithm: dpo\n"), [], "_test")


def test_model_remat_modes():
    """model.remat: false, attention, dots or true; anything else is one line naming the key."""
    assert load_config(None, [], "_test").model.remat == "dots"  # the default
    for text, value in [("false", False), ("attention", "attention"), ("dots", "dots"), ("true", True)]:
        got = load_config(None, [f"model.remat={text}"], "_test").model.remat
        assert got is value if isinstance(value, bool) else got == value
    with pytest.raises(JaxalignError, match=r"^config key 'model.remat': 'block' is not one of false, attention, dots, true$"):
        load_config(None, ["model.remat=block"], "_test")
    with pytest.raises(JaxalignError, match="model.remat.*expected bool or str"):
        load_config(None, ["model.remat=1"], "_test")
