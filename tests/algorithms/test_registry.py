"""The one algorithm registry: ``load_config`` finds every section lazily (no import order to get
right), every row names a module with ``Config`` and ``build_job``, the CLI offers exactly the
registered algorithms, and an algorithm registered from outside the package loads and builds."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from jaxalign import algorithms
from jaxalign.algorithms import registry
from jaxalign.cli import build_parser
from jaxalign.config import load_config
from jaxalign.errors import JaxalignError
from tests import procenv

ROOT = Path(__file__).resolve().parents[2]


def test_every_row_names_a_module_with_its_config_and_build_job():
    for row in registry.ALGORITHMS.values():
        module = row.load()
        assert dataclasses.is_dataclass(module.Config) and callable(module.build_job), row.name
        assert row.config_class is module.Config
        assert row.section == row.name.replace("-", "_")


def test_load_config_needs_no_algorithm_imported_first():
    """A fresh interpreter loads every shipped tiny config from the sections alone: each config's
    dataclass comes from its row's jax-free section module, and no algorithm implementation (nor
    JAX) is imported to load and validate it."""
    code = """
import json, sys
from pathlib import Path
from jaxalign.config import load_config
out = {}
for path in sorted(Path("configs").glob("*_tiny.yaml")):
    if path.name.startswith("ape_"):  # jaxalign ape: not a training config
        continue
    cfg = load_config(str(path))
    out[path.name] = [cfg.algorithm, type(cfg.algo).__module__]
impl = sorted(m for m in sys.modules if m.startswith("jaxalign.algorithms.")
              and not m.startswith("jaxalign.algorithms.sections") and m != "jaxalign.algorithms.registry")
print(json.dumps({"configs": out, "impl": impl, "jax": "jax" in sys.modules}))
"""
    proc = procenv.run([sys.executable, "-c", code], cwd=ROOT, timeout=300, env=procenv.subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["configs"]) >= len(registry.ALGORITHMS)
    for name, (alg, module) in out["configs"].items():
        assert module == registry.get(alg).settings, name
    assert out["impl"] == [] and out["jax"] is False, out


def test_every_builtin_section_lives_apart_from_its_implementation():
    for name in registry.BUILTIN:
        row = registry.get(name)
        assert row.settings == f"jaxalign.algorithms.sections.{row.section}"
        assert row.config_class.__module__ == row.settings


def test_the_cli_offers_exactly_the_registered_algorithms():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    offered = set(sub.choices) - {"info", "export", "plan", "generate", "demo", "ape"}
    assert offered == set(registry.names())


def test_an_unknown_algorithm_is_one_line_naming_the_known_ones():
    with pytest.raises(JaxalignError, match=r"unknown algorithm 'dpoo' \(known: .*dpo.*online-dpo"):
        load_config(None, ["algorithm=dpoo"])


@dataclasses.dataclass
class _ToyConfig:
    scale: float = 1.0


def test_an_algorithm_registered_from_outside_loads_and_builds():
    built = []
    try:
        algorithms.register("toy-alg", _ToyConfig, build=lambda cfg: built.append(cfg) or "job", help="a toy")
        cfg = load_config(None, ["algorithm=toy-alg", "toy_alg.scale=3"])
        assert isinstance(cfg.algo, _ToyConfig) and cfg.algo.scale == 3.0
        assert algorithms.build_job(cfg) == "job" and built == [cfg]
        with pytest.raises(JaxalignError, match="unknown config key 'toy_alg.scal'"):
            load_config(None, ["algorithm=toy-alg", "toy_alg.scal=3"])
    finally:
        registry.ALGORITHMS.pop("toy-alg", None)
