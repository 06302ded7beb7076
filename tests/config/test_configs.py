"""Every shipped config under configs/ loads and validates (keys, types, algorithm section)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jaxalign import algorithms
from jaxalign.config import load_config

# configs/ape_*.yaml are `jaxalign ape` configs, not training runs: tests/ape/test_config.py loads them.
CONFIGS = sorted(p for p in Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml")
                 if not p.name.startswith("ape_"))


def test_there_are_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path):
    alg = yaml.safe_load(path.read_text())["algorithm"]
    assert alg in algorithms.ALGORITHMS, f"{path.name}: algorithm {alg!r} has no module"
    algorithms.get(alg)
    cfg = load_config(path, algorithm=alg)
    assert cfg.algorithm == alg and cfg.algo is not None
    assert path.name.startswith(f"{alg}_")
