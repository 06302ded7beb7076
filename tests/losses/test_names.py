"""The losses' option names live once, in the jax-free ``jaxalign.losses.names``; the loss
modules use those very objects, and importing the names loads no JAX."""

import subprocess
import sys
from pathlib import Path

from jaxalign.losses import dpo, kto, names, policy_gradient, ppo, raft


def test_the_loss_modules_use_the_one_definition():
    assert dpo.LOSS_TYPES is names.DPO_LOSS_TYPES and dpo._as_tuple is names.dpo_loss_types
    assert kto.LOSS_TYPES is names.KTO_LOSS_TYPES and ppo.KL_ESTIMATORS is names.KL_ESTIMATORS
    assert policy_gradient.AGGREGATIONS is names.AGGREGATIONS
    assert policy_gradient.canonical_aggregation is names.canonical_aggregation and raft.num_top is names.num_top
    assert names.dpo_loss_types(["rpo", "sigmoid"]) == ("sft", "sigmoid")
    assert names.canonical_aggregation("token_mean") == "dapo"


def test_the_names_import_no_jax():
    code = "import sys, jaxalign.losses.names, jaxalign.losses; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
