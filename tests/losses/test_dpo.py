"""Tests for jaxalign/losses/dpo.py: numpy closed forms of ALGORITHMS.md §3 written here,
identities, and parity with TRL 1.16's own code (DPOTrainer._compute_loss, CPOTrainer.cpo_loss)."""

import os
import types
from collections import defaultdict
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from jaxalign.losses import dpo

BETA = 0.1


def logsig(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def sig(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def data(seed=0, b=6):
    rng = np.random.default_rng(seed)
    pw = (-30 + 10 * rng.standard_normal(b)).astype(np.float32)
    pl = (-30 + 10 * rng.standard_normal(b)).astype(np.float32)
    rw = (pw + 3 * rng.standard_normal(b)).astype(np.float32)
    rl = (pl + 3 * rng.standard_normal(b)).astype(np.float32)
    lw = rng.integers(1, 7, b).astype(np.int32)
    ll = rng.integers(1, 7, b).astype(np.int32)
    return pw, pl, rw, rl, lw, ll


def np_per_pair(t, pw, pl, rw, rl, lw, ll, beta=BETA, eps=0.0, gamma=0.5, tau=0.05, delta=0.0):
    """ALGORITHMS.md §3, one formula per row, in float64."""
    pw, pl, rw, rl = (np.asarray(a, np.float64) for a in (pw, pl, rw, rl))
    c, r = pw - rw, pl - rl
    d = c - r
    if t == "sigmoid":
        return -(1 - eps) * logsig(beta * d) - eps * logsig(-beta * d)
    if t == "hinge":
        return np.maximum(0.0, 1 - beta * d)
    if t == "ipo":
        return (c / lw - r / ll - 1 / (2 * beta)) ** 2
    if t == "robust":
        return (-(1 - eps) * logsig(beta * d) + eps * logsig(-beta * d)) / (1 - 2 * eps)
    if t == "exo_pair":
        e = eps if eps > 0 else 1e-3
        return (sig(beta * d) * (logsig(beta * d) - np.log(1 - e))
                + sig(-beta * d) * (logsig(-beta * d) - np.log(e)))
    if t == "nca_pair":
        return -logsig(beta * c) - 0.5 * logsig(-beta * c) - 0.5 * logsig(-beta * r)
    if t == "bco_pair":
        return -logsig(beta * c - delta) - logsig(-(beta * r - delta))
    if t == "sppo_hard":
        return (c - 1 / (2 * beta)) ** 2 + (r + 1 / (2 * beta)) ** 2
    if t == "aot":
        ds = np.sort(pw - pl) - np.sort(rw - rl)
        return -(1 - eps) * logsig(beta * ds) - eps * logsig(-beta * ds)
    if t == "aot_pair":
        ds = np.sort(c) - np.sort(r)
        return -(1 - eps) * logsig(beta * ds) - eps * logsig(-beta * ds)
    if t == "apo_zero":
        return (1 - sig(beta * c)) + sig(beta * r)
    if t == "apo_down":
        return sig(beta * c) + (1 - sig(beta * d))
    if t == "discopop":
        m = sig(beta * d / tau)
        return (1 - m) * (-logsig(beta * d)) + m * np.exp(-beta * d)
    if t == "sigmoid_norm":
        return -logsig(beta * (c / lw - r / ll))
    if t == "simpo":
        z = beta * (pw / lw - pl / ll) - gamma
        return -(1 - eps) * logsig(z) - eps * logsig(-z)
    if t == "sft":
        return np.full(pw.shape, -pw.sum() / lw.sum())
    raise ValueError(t)


ALL = [t for t in dpo.LOSS_TYPES]


class ClosedFormTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*ALL)
    def test_against_numpy(self, loss_type):
        pw, pl, rw, rl, lw, ll = data()
        eps = 0.1 if loss_type in ("sigmoid", "robust", "exo_pair", "aot", "aot_pair", "simpo") else 0.0
        fn = self.variant(partial(dpo.dpo_loss, loss_type=loss_type, beta=BETA, label_smoothing=eps))
        loss, metrics = fn(pw, pl, rw, rl, chosen_lengths=lw, rejected_lengths=ll)
        ref = np_per_pair(loss_type, pw, pl, rw, rl, lw, ll, eps=eps).mean()
        np.testing.assert_allclose(loss, ref, rtol=2e-5, atol=1e-6)
        c, r = pw - rw, pl - rl
        np.testing.assert_allclose(metrics["rewards/chosen"], (BETA * c).mean(), rtol=1e-5)
        np.testing.assert_allclose(metrics["rewards/rejected"], (BETA * r).mean(), rtol=1e-5)
        np.testing.assert_allclose(metrics["rewards/accuracies"], (c > r).mean())
        np.testing.assert_allclose(metrics["rewards/margins"], (BETA * (c - r)).mean(), rtol=1e-4, atol=1e-6)

    def test_hand_example(self):
        # Δ = 0: sigmoid loss is log 2; hinge is 1; sppo_hard (c=r=0) is 2·(1/(2β))² = 50.
        z = jnp.array([-5.0])
        for t, v in (("sigmoid", np.log(2.0)), ("hinge", 1.0), ("sppo_hard", 50.0)):
            np.testing.assert_allclose(dpo.dpo_loss(z, z, z, z, loss_type=t)[0], v, rtol=1e-6)

    def test_exo_pair_default_epsilon(self):
        pw, pl, rw, rl, lw, ll = data(1)
        loss, _ = dpo.dpo_loss(pw, pl, rw, rl, loss_type="exo_pair")
        np.testing.assert_allclose(loss, np_per_pair("exo_pair", pw, pl, rw, rl, lw, ll).mean(), rtol=1e-5)


class IdentityTest(chex.TestCase):

    def test_sigmoid_eps0_is_minus_logsigmoid(self):
        pw, pl, rw, rl, _, _ = data(2)
        loss, _ = dpo.dpo_loss(pw, pl, rw, rl, beta=0.3)
        delta = (pw.astype(np.float64) - rw) - (pl - rl)
        np.testing.assert_allclose(loss, -logsig(0.3 * delta).mean(), rtol=1e-5)

    def test_robust_eps0_is_sigmoid(self):
        pw, pl, rw, rl, _, _ = data(3)
        a, _ = dpo.dpo_loss(pw, pl, rw, rl, loss_type="robust")
        b, _ = dpo.dpo_loss(pw, pl, rw, rl, loss_type="sigmoid")
        np.testing.assert_allclose(a, b, rtol=1e-6)

    def test_aot_single_pair_is_sigmoid(self):
        pw, pl, rw, rl, _, _ = data(4, b=1)
        s, _ = dpo.dpo_loss(pw, pl, rw, rl)
        for t in ("aot", "aot_pair"):
            np.testing.assert_allclose(dpo.dpo_loss(pw, pl, rw, rl, loss_type=t)[0], s, rtol=1e-6)

    def test_reference_free(self):
        pw, pl, rw, rl, lw, ll = data(5)
        z = np.zeros_like(pw)
        for t in ("sigmoid", "ipo", "nca_pair"):
            a, ma = dpo.dpo_loss(pw, pl, rw, rl, chosen_lengths=lw, rejected_lengths=ll,
                                 loss_type=t, reference_free=True)
            b, mb = dpo.dpo_loss(pw, pl, z, z, chosen_lengths=lw, rejected_lengths=ll, loss_type=t)
            np.testing.assert_allclose(a, b, rtol=1e-6)
            chex.assert_trees_all_close(ma, mb)
        # SimPO needs no reference at all.
        dpo.dpo_loss(pw, pl, chosen_lengths=lw, rejected_lengths=ll, loss_type="simpo")

    def test_mix_and_rpo(self):
        pw, pl, rw, rl, lw, ll = data(6)
        kw = dict(chosen_lengths=lw, rejected_lengths=ll)
        single = {t: float(dpo.dpo_loss(pw, pl, rw, rl, loss_type=t, **kw)[0]) for t in ("sigmoid", "ipo", "sft")}
        mix, m = dpo.dpo_loss(pw, pl, rw, rl, loss_type=("sigmoid", "ipo"), loss_weights=(0.7, 0.3),
                              rpo_alpha=0.5, **kw)
        np.testing.assert_allclose(mix, 0.7 * single["sigmoid"] + 0.3 * single["ipo"] + 0.5 * single["sft"],
                                   rtol=1e-5)
        np.testing.assert_allclose(m["loss/ipo"], single["ipo"], rtol=1e-6)
        np.testing.assert_allclose(single["sft"], -pw.astype(np.float64).sum() / lw.sum(), rtol=1e-6)

    def test_ipo_averages_over_tokens(self):
        # Summed log-ratios with lengths L give the same IPO loss as the per-token averages.
        pw, pl, rw, rl, lw, ll = data(7)
        a, _ = dpo.dpo_loss(pw, pl, rw, rl, chosen_lengths=lw, rejected_lengths=ll, loss_type="ipo")
        one = np.ones_like(lw)
        avg = [(x / n).astype(np.float32) for x, n in ((pw, lw), (pl, ll), (rw, lw), (rl, ll))]
        b, _ = dpo.dpo_loss(*avg, chosen_lengths=one, rejected_lengths=one, loss_type="ipo")
        np.testing.assert_allclose(a, b, rtol=1e-5)


class BCOTest(chex.TestCase):

    def test_running_mean_is_pure_and_used(self):
        pw, pl, rw, rl, lw, ll = data(8)
        s0 = dpo.bco_init()
        loss1, m1 = jax.jit(partial(dpo.dpo_loss, loss_type="bco_pair"))(pw, pl, rw, rl, bco_state=s0)
        s1 = m1["bco_state"]
        rewards1 = np.concatenate([BETA * (pw - rw), BETA * (pl - rl)]).astype(np.float64)
        np.testing.assert_allclose(s1.mean, rewards1.mean(), rtol=1e-5)
        self.assertEqual(float(s1.count), 12.0)
        self.assertEqual(float(s0.count), 0.0)  # input untouched
        np.testing.assert_allclose(
            loss1, np_per_pair("bco_pair", pw, pl, rw, rl, lw, ll, delta=rewards1.mean()).mean(), rtol=1e-5)
        # Second batch: δ is the mean over all rewards seen so far.
        qw, ql, sw, sl, _, _ = data(9)
        loss2, m2 = dpo.dpo_loss(qw, ql, sw, sl, loss_type="bco_pair", bco_state=s1)
        allr = np.concatenate([rewards1, BETA * (qw - sw), BETA * (ql - sl)])
        np.testing.assert_allclose(m2["bco_state"].mean, allr.mean(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            loss2, np_per_pair("bco_pair", qw, ql, sw, sl, lw, ll, delta=allr.mean()).mean(), rtol=1e-5)

    def test_delta_has_no_gradient(self):
        pw, pl, rw, rl, _, _ = data(10)
        g = jax.grad(lambda x: dpo.dpo_loss(x, pl, rw, rl, loss_type="bco_pair",
                                            bco_state=dpo.bco_init())[0])(jnp.asarray(pw))
        d = float(dpo.bco_update(dpo.bco_init(), BETA * (pw - rw), BETA * (pl - rl)).mean)
        c = BETA * (pw.astype(np.float64) - rw)
        np.testing.assert_allclose(g, -BETA * sig(-(c - d)) / len(pw), rtol=1e-4)


class GradTest(chex.TestCase):

    @parameterized.parameters("sigmoid", "ipo", "discopop", "aot", "simpo", "exo_pair")
    def test_check_grads(self, loss_type):
        pw, pl, rw, rl, lw, ll = data(11, b=4)
        with jax.enable_x64(True):
            f = jax.jit(lambda a, b: dpo.dpo_loss(a, b, rw, rl, chosen_lengths=lw, rejected_lengths=ll,
                                                  loss_type=loss_type, beta=0.5)[0])
            check_grads(f, (jnp.asarray(pw, jnp.float64), jnp.asarray(pl, jnp.float64)), order=1)

    def test_vmap_over_independent_batches(self):
        pw, pl, rw, rl, _, _ = data(12, b=8)
        f = lambda *a: dpo.dpo_loss(*a, loss_type="hinge")[0]
        out = jax.vmap(f)(*(x.reshape(2, 4) for x in (pw, pl, rw, rl)))
        np.testing.assert_allclose(out.mean(), f(pw, pl, rw, rl), rtol=1e-6)

    def test_errors(self):
        pw, pl, rw, rl, lw, ll = data(13)
        with self.assertRaises(ValueError):
            dpo.dpo_loss(pw, pl, rw, rl, loss_type="nope")
        with self.assertRaises(ValueError):
            dpo.dpo_loss(pw, pl, rw, rl, loss_type="ipo")
        with self.assertRaises(ValueError):
            dpo.dpo_loss(pw, pl, loss_type="sigmoid")
        with self.assertRaises(ValueError):
            dpo.dpo_loss(pw, pl, rw, rl, loss_type="robust", label_smoothing=0.5)
        with self.assertRaises(AssertionError):
            dpo.dpo_loss(pw, pl[:3], rw, rl)


# ----------------------------------------------------------------------------- TRL parity

def trl_dpo(loss_types, beta, eps, pw, pl, rw, rl, lw, ll, weights=None):
    """Runs TRL 1.16's real DPOTrainer._compute_loss on a minimal stand-in object.

    The stand-in "model" returns per-token log-probs that sum to the given sequence
    log-probs over the completion tokens (shifted mask), and the reference log-probs are
    passed as precomputed (``precompute_ref_logps=True``)."""
    torch = pytest.importorskip("torch")
    from trl.trainer.dpo_trainer import DPOTrainer

    b = len(pw)
    lens = np.concatenate([lw, ll])
    seq = int(lens.max()) + 2
    mask = np.zeros((2 * b, seq), np.int64)
    per_tok = np.zeros((2 * b, seq - 1), np.float32)
    totals = np.concatenate([pw, pl])
    for i, n in enumerate(lens):
        mask[i, 1:1 + n] = 1  # position 0 is the prompt
        per_tok[i, :n] = totals[i] / n  # shift mask = mask[:, 1:]
    log_probs = torch.tensor(per_tok)

    def model(**kwargs):
        z = torch.zeros_like(log_probs)
        return types.SimpleNamespace(log_probs=log_probs, entropy=z, mean_logits=z,
                                     is_top1=torch.zeros_like(log_probs, dtype=torch.bool))

    model.training = True
    loss_types = [loss_types] if isinstance(loss_types, str) else list(loss_types)
    self = types.SimpleNamespace(
        model=model, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        accelerator=types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x),
        f_divergence_type="reverse_kl", loss_types=loss_types,
        loss_weights=weights or [1.0] * len(loss_types), beta=beta, label_smoothing=eps,
        args=types.SimpleNamespace(discopop_tau=0.05), use_weighting=False,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = dict(input_ids=torch.zeros((2 * b, seq), dtype=torch.long), attention_mask=torch.tensor(mask),
                  completion_mask=torch.tensor(mask), ref_chosen_logps=torch.tensor(rw),
                  ref_rejected_logps=torch.tensor(rl))
    loss = DPOTrainer._compute_loss(self, model, inputs, False)
    return float(loss), {k: v[-1] for k, v in self._metrics["train"].items()}


TRL_SHARED = [  # (our loss_type, TRL's name, label smoothing)
    ("sigmoid", "sigmoid", 0.0), ("hinge", "hinge", 0.0), ("ipo", "ipo", 0.0),
    ("robust", "robust", 0.0), ("robust", "robust", 0.2), ("exo_pair", "exo_pair", 0.1),
    ("nca_pair", "nca_pair", 0.0), ("bco_pair", "bco_pair", 0.0), ("sppo_hard", "sppo_hard", 0.0),
    ("aot", "aot", 0.0), ("aot", "aot", 0.1), ("aot_pair", "aot_unpaired", 0.1),
    ("apo_zero", "apo_zero", 0.0), ("apo_down", "apo_down", 0.0), ("discopop", "discopop", 0.0),
    ("sigmoid_norm", "sigmoid_norm", 0.0), ("sft", "sft", 0.0),
]


class TRLParityTest(parameterized.TestCase):

    def setUp(self):
        super().setUp()
        pytest.importorskip("torch")
        pytest.importorskip("trl")

    @parameterized.parameters(*TRL_SHARED)
    def test_dpo_trainer(self, ours, theirs, eps):
        pw, pl, rw, rl, lw, ll = data(20, b=5)
        ref, ref_m = trl_dpo(theirs, 0.2, eps, pw, pl, rw, rl, lw, ll)
        loss, m = dpo.dpo_loss(pw, pl, rw, rl, chosen_lengths=lw, rejected_lengths=ll, beta=0.2,
                               loss_type=ours, label_smoothing=eps)
        np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-5)
        for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                  "logps/chosen", "logps/rejected"):
            np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5, atol=1e-5, err_msg=k)

    def test_weighted_mix(self):
        pw, pl, rw, rl, lw, ll = data(21, b=5)
        ref, _ = trl_dpo(["sigmoid", "ipo", "sft"], 0.1, 0.0, pw, pl, rw, rl, lw, ll, weights=[0.8, 0.2, 1.0])
        loss, _ = dpo.dpo_loss(pw, pl, rw, rl, chosen_lengths=lw, rejected_lengths=ll,
                               loss_type=("sigmoid", "ipo"), loss_weights=(0.8, 0.2), rpo_alpha=1.0)
        np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-5)

    @parameterized.parameters(0.0, 0.1)
    def test_simpo_against_cpo_trainer(self, eps):
        torch = pytest.importorskip("torch")
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.cpo.cpo_trainer import CPOTrainer
        pw, pl, _, _, lw, ll = data(22, b=5)
        self_ = types.SimpleNamespace(alpha=0.0, beta=2.0, simpo_gamma=0.5, loss_type="simpo",
                                      label_smoothing=eps, accelerator=types.SimpleNamespace(device="cpu"))
        # CPO's SimPO takes per-token averaged log-probs (average_log_prob=True).
        losses, _, _ = CPOTrainer.cpo_loss(self_, torch.tensor(pw / lw), torch.tensor(pl / ll))
        loss, _ = dpo.dpo_loss(pw, pl, chosen_lengths=lw, rejected_lengths=ll, beta=2.0, loss_type="simpo",
                               simpo_gamma=0.5, label_smoothing=eps)
        np.testing.assert_allclose(loss, losses.mean().item(), rtol=1e-5, atol=1e-5)
