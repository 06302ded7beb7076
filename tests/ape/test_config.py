import pytest

from jaxalign.ape.config import ApeConfig, ApeRunConfig, load_ape_config
from jaxalign.config.fields import config_keys
from jaxalign.errors import JaxalignError


def test_every_key_has_a_meaning():
    missing = [k for k, _, meaning in config_keys(ApeRunConfig) if not meaning.strip()]
    assert missing == []
    assert {k for k, _, _ in config_keys(ApeRunConfig)} >= {"ape.stage_sizes", "ape.keep_quantile", "model.path"}


@pytest.mark.parametrize("path", ["configs/ape_smollm2.yaml", "configs/ape_tiny.yaml"])
def test_shipped_configs_load(path):
    cfg = load_ape_config(path)
    assert isinstance(cfg.ape, ApeConfig)


def test_overrides_and_errors():
    cfg = load_ape_config("configs/ape_tiny.yaml", ["ape.num_candidates=3", "seed=4"])
    assert cfg.ape.num_candidates == 3 and cfg.seed == 4
    with pytest.raises(JaxalignError, match="ape.num_candidatez"):
        load_ape_config(None, ["ape.num_candidatez=3"])
    with pytest.raises(JaxalignError, match="'ape.metric'"):
        load_ape_config(None, ["ape.metric=bleu"])
    with pytest.raises(JaxalignError, match="'ape.stage_sizes'.*more than ape.train_size"):
        load_ape_config(None, ["ape.stage_sizes=[40, 40]"])
    with pytest.raises(JaxalignError, match="'ape.keep_quantile'"):
        load_ape_config(None, ["ape.keep_quantile=1.5"])
