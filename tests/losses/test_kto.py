"""Tests for jaxalign/losses/kto.py: a float64 numpy port of TRL 1.16's KTOTrainer._compute_loss
(chosen and rejected rows selected, the KL term a clamped batch mean, losses concatenated and
averaged), hand-computed values, the gradient in closed form, and input checks."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax.test_util import check_grads

from jaxalign.losses import kto

BETA = 0.1


def sig(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def data(seed=0, b=8, kl_shift=0.0, labels=None):
    """Summed log-probs of B rows (own and mismatched completions), policy and reference.
    ``kl_shift`` moves the mean mismatched log-ratio (negative: the clamp at 0 is active)."""
    rng = np.random.default_rng(seed)
    pw = (-30 + 10 * rng.standard_normal(b)).astype(np.float32)
    rw = (pw + 4 * rng.standard_normal(b)).astype(np.float32)
    pk = (-40 + 10 * rng.standard_normal(b)).astype(np.float32)
    rk = (pk - kl_shift + 2 * rng.standard_normal(b)).astype(np.float32)
    lab = rng.integers(0, 2, b).astype(bool) if labels is None else np.asarray(labels, bool)
    return pw, rw, lab, pk, rk


def trl_kto(pw, rw, lab, pk, rk, beta=BETA, wd=1.0, wu=1.0, loss_type="kto"):
    """TRL 1.16 KTOTrainer._compute_loss (kto_trainer.py), the loss part, ported to float64 numpy:
    rows split by label (index_select), ``kl = clamp(mean(KL_logps - ref_KL_logps), min=0)``
    (zero for apo_zero_unpaired), per-label losses, ``cat(wd*chosen, wu*rejected).nanmean()``."""
    pw, rw, pk, rk = (np.asarray(a, np.float64) for a in (pw, rw, pk, rk))
    lab = np.asarray(lab, bool)
    kl = max(np.mean(pk - rk), 0.0) if loss_type == "kto" else 0.0
    cr, rr = pw[lab] - rw[lab], pw[~lab] - rw[~lab]
    if loss_type == "kto":
        cl, rl = 1 - sig(beta * (cr - kl)), 1 - sig(beta * (kl - rr))
    else:
        cl, rl = 1 - sig(beta * cr), sig(beta * rr)
    loss = np.nanmean(np.concatenate([wd * cl, wu * rl]))
    m = {"kl": kl}
    if lab.any():
        m["rewards/chosen"] = np.sum(beta * cr) / lab.sum()
        m["logps/chosen"] = np.sum(pw[lab]) / lab.sum()
    if (~lab).any():
        m["rewards/rejected"] = np.sum(beta * rr) / (~lab).sum()
        m["logps/rejected"] = np.sum(pw[~lab]) / (~lab).sum()
    if lab.any() and (~lab).any():
        m["rewards/margins"] = m["rewards/chosen"] - m["rewards/rejected"]
    return loss, m


CASES = [  # (loss_type, beta, desirable_weight, undesirable_weight, kl_shift, labels)
    ("kto", BETA, 1.0, 1.0, 3.0, None),
    ("kto", 0.5, 1.33, 0.7, 3.0, None),
    ("kto", BETA, 1.0, 1.0, -3.0, None),          # negative mean log-ratio: clamped to 0
    ("kto", 0.2, 1.0, 2.0, 1.0, [True] * 8),      # only desirable rows
    ("kto", 0.2, 1.0, 2.0, 1.0, [False] * 8),     # only undesirable rows
    ("apo_zero_unpaired", BETA, 1.0, 1.0, 3.0, None),
    ("apo_zero_unpaired", 0.3, 0.5, 1.5, 3.0, None),
]


class ClosedFormTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*CASES)
    def test_against_trl_port(self, loss_type, beta, wd, wu, kl_shift, labels):
        pw, rw, lab, pk, rk = data(kl_shift=kl_shift, labels=labels)
        assert 0 < lab.sum() < len(lab) or labels is not None
        fn = self.variant(partial(kto.kto_loss, beta=beta, desirable_weight=wd, undesirable_weight=wu,
                                  loss_type=loss_type))
        loss, m = fn(pw, rw, lab, pk, rk)
        want, wm = trl_kto(pw, rw, lab, pk, rk, beta, wd, wu, loss_type)
        np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-7)
        for k, v in wm.items():
            np.testing.assert_allclose(m[k], v, rtol=1e-5, atol=1e-5, err_msg=k)
        # TRL logs nothing for an absent label; jaxalign logs 0 (a masked mean over no rows).
        for k in set(m) - set(wm) - {"desirable_fraction"}:
            self.assertEqual(float(m[k]), 0.0)
        np.testing.assert_allclose(m["desirable_fraction"], lab.mean())

    def test_kl_is_clamped_batch_mean(self):
        _, _, _, pk, rk = data(1, kl_shift=2.5)
        np.testing.assert_allclose(kto.kto_kl(pk, rk), np.mean(pk.astype(np.float64) - rk), rtol=1e-5)
        _, _, _, pk, rk = data(1, kl_shift=-2.5)
        self.assertEqual(float(kto.kto_kl(pk, rk)), 0.0)

    def test_hand_example(self):
        # Policy = reference on the own completions: r = 0, so every row costs 1 − σ(∓β·z₀).
        # Mismatched log-ratios 2 and 4: z₀ = 3.
        z = jnp.array([-7.0, -9.0])
        lab = jnp.array([True, False])
        pk, rk = jnp.array([-10.0, -20.0]), jnp.array([-12.0, -24.0])
        loss, m = kto.kto_loss(z, z, lab, pk, rk, beta=0.5, desirable_weight=2.0)
        want = (2.0 * (1 - sig(-1.5)) + (1 - sig(1.5))) / 2
        np.testing.assert_allclose(loss, want, rtol=1e-6)
        self.assertEqual(float(m["kl"]), 3.0)
        # With the policy equal to the reference everywhere, z₀ = 0 and every row costs 1/2.
        loss0, _ = kto.kto_loss(z, z, lab, z, z)
        np.testing.assert_allclose(loss0, 0.5, rtol=1e-6)


class GradTest(chex.TestCase):

    def test_gradient_closed_form_and_none_through_kl(self):
        pw, rw, lab, pk, rk = data(2, kl_shift=3.0)
        beta, wd, wu = 0.3, 1.2, 0.8
        f = lambda a, k: kto.kto_loss(a, rw, lab, k, rk, beta=beta, desirable_weight=wd,  # noqa: E731
                                      undesirable_weight=wu)[0]
        g_own, g_kl = jax.grad(f, argnums=(0, 1))(jnp.asarray(pw), jnp.asarray(pk))
        z0 = max(np.mean(pk.astype(np.float64) - rk), 0.0)
        r = pw.astype(np.float64) - rw
        d = sig(beta * (r - z0)) * (1 - sig(beta * (r - z0)))  # σ' is even about 0: same for z₀ − r
        want = np.where(lab, -wd * beta * d, wu * beta * d) / len(pw)
        np.testing.assert_allclose(g_own, want, rtol=1e-4, atol=1e-9)
        np.testing.assert_array_equal(np.asarray(g_kl), 0.0)

    @parameterized.parameters("kto", "apo_zero_unpaired")
    def test_check_grads(self, loss_type):
        pw, rw, lab, pk, rk = data(3)
        with jax.enable_x64(True):
            f = jax.jit(lambda a: kto.kto_loss(a, rw.astype(np.float64), lab, pk.astype(np.float64),
                                               rk.astype(np.float64), beta=0.5, loss_type=loss_type)[0])
            check_grads(f, (jnp.asarray(pw, jnp.float64),), order=1)

    def test_errors(self):
        pw, rw, lab, pk, rk = data(4)
        with self.assertRaises(ValueError):
            kto.kto_loss(pw, rw, lab, pk, rk, loss_type="nope")
        with self.assertRaises(ValueError):
            kto.kto_loss(pw, rw, lab)  # kto needs the mismatched pairs
        kto.kto_loss(pw, rw, lab, loss_type="apo_zero_unpaired")  # ... APO-zero does not
        with self.assertRaises(AssertionError):
            kto.kto_loss(pw, rw[:3], lab, pk, rk)
        with self.assertRaises(AssertionError):
            kto.kto_loss(pw, rw, lab[:3], pk, rk)
        with self.assertRaises(AssertionError):
            kto.kto_loss(pw, rw, lab, pk, rk[:3])
