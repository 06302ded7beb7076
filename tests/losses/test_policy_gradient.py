"""Tests for jaxalign/losses/policy_gradient.py: closed forms written here in numpy (values and
gradients), and direct torch ports of TRL's GRPOTrainer / RLOOTrainer loss formulas."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxalign.losses import policy_gradient as pg

# Row 3 is empty: it must not count anywhere. RAGGED has no empty row (TRL counts empty rows).
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
RAGGED = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])


def rand(seed, shape=MASK.shape, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def inputs(seed=0, mask=MASK, spread=0.3):
    """Log-probs (negative), old log-probs near them (ratios around 1, some clipped) and
    per-sequence advantages of both signs."""
    logps = -np.abs(rand(seed, mask.shape))
    old = logps + rand(seed + 1, mask.shape, spread)
    adv = rand(seed + 2, (mask.shape[0], 1))
    return logps, old, adv


def np_aggregate(x, m, name, l_max=None):
    m = m.astype(np.float64)
    if name in ("dapo", "bnpo", "token_mean"):
        return (x * m).sum() / m.sum()
    if name in ("grpo", "sequence_mean"):
        has = m.sum(-1) > 0
        return ((x * m).sum(-1)[has] / m.sum(-1)[has]).mean()
    return (x * m).sum() / (x.shape[0] * l_max)


def np_seq_log_ratio(logps, old, m, normalise):
    d = ((logps.astype(np.float64) - old) * m).sum(-1)
    return d / np.maximum(m.sum(-1), 1) if normalise else d


class AggregateTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("grpo", "bnpo", "dapo", "dr_grpo", "token_mean", "sequence_mean")
    def test_against_numpy(self, name):
        x = rand(0)
        out = self.variant(partial(pg.aggregate, aggregation=name, max_completion_length=7))(x, MASK)
        np.testing.assert_allclose(out, np_aggregate(x.astype(np.float64), MASK, name, 7), rtol=1e-5)

    def test_aliases_and_errors(self):
        x = rand(1)
        self.assertEqual(float(pg.aggregate(x, MASK, "token_mean")), float(pg.aggregate(x, MASK, "dapo")))
        self.assertEqual(float(pg.aggregate(x, MASK, "sequence_mean")), float(pg.aggregate(x, MASK, "grpo")))
        with self.assertRaises(ValueError):
            pg.aggregate(x, MASK, "dr_grpo")  # needs L_max
        with self.assertRaises(ValueError):
            pg.aggregate(x, MASK, "mean")

    def test_padding_never_leaks(self):
        x = np.where(MASK.astype(bool), rand(2), np.nan).astype(np.float32)
        for name in ("grpo", "dapo", "dr_grpo"):
            self.assertTrue(np.isfinite(float(pg.aggregate(x, MASK, name, max_completion_length=5))))

    def test_weights(self):
        # tokens, non-empty sequences, rows, one per micro-batch
        self.assertEqual([float(pg.weight(MASK, n)) for n in ("dapo", "grpo", "dr_grpo", "bnpo")],
                         [9.0, 3.0, 4.0, 1.0])


class ImportanceWeightsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_values(self):
        logps, old, _ = inputs(3)
        m = MASK.astype(bool)
        for level, want in (
                ("token", np.where(m, logps.astype(np.float64) - old, 0.0)),
                ("sequence", np.where(m, np_seq_log_ratio(logps, old, MASK, True)[:, None], 0.0)),
                ("sequence_token", np.where(m, np_seq_log_ratio(logps, old, MASK, True)[:, None], 0.0)),
                ("sequence_sum", np.where(m, np_seq_log_ratio(logps, old, MASK, False)[:, None], 0.0))):
            out = self.variant(partial(pg.log_importance_weights, level=level))(logps, old, MASK)
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6, err_msg=level)

    def test_gradients(self):
        # d/d logp_{i,t} of Σ c·log w: token -> c_t; sequence -> Σ_t' c_t' / |y_i| on every token;
        # GSPO-token -> c_t (its own token only: sg[s_i] π/sg[π]); sequence_sum -> Σ_t' c_t'.
        logps, old, _ = inputs(4)
        c = rand(5)
        m = MASK.astype(np.float64)
        rowsum = (c * m).sum(-1, keepdims=True)
        n = np.maximum(m.sum(-1, keepdims=True), 1)
        want = {"token": c * m, "sequence": rowsum / n * m, "sequence_token": c * m, "sequence_sum": rowsum * m}
        for level, w in want.items():
            g = jax.grad(lambda lp: jnp.sum(c * pg.log_importance_weights(lp, old, MASK, level)))(logps)
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=level)

    def test_unknown_level(self):
        with self.assertRaises(ValueError):
            pg.log_importance_weights(*inputs(0)[:2], MASK, "tokens")


def np_clip_loss(w, adv, lo, hi):
    """Per-token PPO surrogate and whether the unclipped branch carries the gradient."""
    unclipped, clipped = -adv * w, -adv * np.clip(w, 1 - lo, 1 + hi)
    return np.maximum(unclipped, clipped), ~(clipped > unclipped)


class ClipLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("dapo", "grpo", "dr_grpo")
    def test_token_level_clip_higher(self, aggregation):
        # DAPO's asymmetric clip: ε_low 0.2, ε_high 0.28, on ratios spread around 1.
        logps, old, adv = inputs(6, spread=0.4)
        w = np.exp(logps.astype(np.float64) - old)
        loss_t, live = np_clip_loss(w, adv, 0.2, 0.28)
        fn = partial(pg.group_policy_loss, clip_eps=0.2, clip_eps_high=0.28, aggregation=aggregation,
                     max_completion_length=6)
        out, metrics = self.variant(fn)(logps, old, adv, MASK)
        np.testing.assert_allclose(out, np_aggregate(loss_t, MASK, aggregation, 6), rtol=1e-5)
        self.assertGreater(float(metrics["clipfrac"]), 0.0)  # the clip is exercised
        np.testing.assert_allclose(metrics["clipfrac"], np_aggregate((~live).astype(float), MASK, "dapo"), rtol=1e-6)
        # d loss / d logp_t = -A ρ_t (unclipped branch) else 0, times the aggregation's weight of t.
        g = jax.grad(lambda lp: fn(lp, old, adv, MASK)[0])(logps)
        m = MASK.astype(np.float64)
        per = np.where(live, -adv * w, 0.0) * m
        scale = {"dapo": 1 / m.sum(), "dr_grpo": 1 / (4 * 6)}
        if aggregation == "grpo":
            want = per / np.maximum(m.sum(-1, keepdims=True), 1) / 3
        else:
            want = per * scale[aggregation]
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)

    def test_clip_higher_only_moves_the_upper_bound(self):
        logps, old, adv = inputs(7, spread=0.4)
        a, _ = pg.group_policy_loss(logps, old, adv, MASK, clip_eps=0.2, clip_eps_high=0.2)
        b, _ = pg.group_policy_loss(logps, old, adv, MASK, clip_eps=0.2)
        c, _ = pg.group_policy_loss(logps, old, adv, MASK, clip_eps=0.2, clip_eps_high=10.0)
        self.assertEqual(float(a), float(b))
        w = np.exp(logps.astype(np.float64) - old)
        np.testing.assert_allclose(c, np_aggregate(np_clip_loss(w, adv, 0.2, 10.0)[0], MASK, "dapo"), rtol=1e-5)
        self.assertNotAlmostEqual(float(a), float(c), places=4)  # the upper clip was active at 0.2

    @chex.variants(with_jit=True, without_jit=True)
    def test_gspo_sequence_level(self):
        # GSPO: s_i = exp(mean_t log ρ), ℓ_i = -min(s_i A_i, clip(s_i, 1-ε, 1+ε_h) A_i), mean over i;
        # d/d logp_{i,t} = -A_i s_i / |y_i| / B' where the unclipped branch is live, else 0.
        logps, old, adv = inputs(9, spread=0.5)
        s = np.exp(np_seq_log_ratio(logps, old, MASK, True))[:, None]
        loss_i, live = np_clip_loss(s, adv, 0.05, 0.08)
        has = MASK.sum(-1) > 0
        fn = partial(pg.group_policy_loss, importance_sampling="sequence", clip_eps=0.05, clip_eps_high=0.08,
                     aggregation="grpo")
        out, _ = self.variant(fn)(logps, old, adv, MASK)
        np.testing.assert_allclose(out, loss_i[has].mean(), rtol=1e-5)
        self.assertTrue(live[has].any() and not live[has].all())  # some sequences clipped, some not
        g = jax.grad(lambda lp: fn(lp, old, adv, MASK)[0])(logps)
        m = MASK.astype(np.float64)
        want = np.where(live, -adv * s, 0.0) / np.maximum(m.sum(-1, keepdims=True), 1) * m / has.sum()
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)

    def test_gspo_token_equals_gspo_with_sequence_advantages(self):
        # arXiv:2507.18071 §4.3: with A_{i,t} = A_i, GSPO-token's value and gradient are GSPO's.
        logps, old, adv = inputs(9, spread=0.5)
        f = lambda lvl: (lambda lp: pg.group_policy_loss(lp, old, adv, MASK, importance_sampling=lvl,
                                                         clip_eps=0.05, aggregation="grpo")[0])
        np.testing.assert_allclose(f("sequence_token")(logps), f("sequence")(logps), rtol=1e-6)
        np.testing.assert_allclose(jax.grad(f("sequence_token"))(logps), jax.grad(f("sequence"))(logps),
                                   rtol=1e-5, atol=1e-7)

    def test_gspo_token_with_token_advantages(self):
        # d/d logp_{i,t} = -A_{i,t} s_i / (|y_i| B') where the token's unclipped branch is live.
        logps, old, _ = inputs(10, spread=0.5)
        adv = rand(11)
        s = np.exp(np_seq_log_ratio(logps, old, MASK, True))[:, None]
        loss_t, live = np_clip_loss(np.broadcast_to(s, MASK.shape), adv, 0.05, 0.05)
        fn = lambda lp: pg.group_policy_loss(lp, old, adv, MASK, importance_sampling="sequence_token",
                                             clip_eps=0.05, aggregation="grpo")[0]
        np.testing.assert_allclose(fn(logps), np_aggregate(loss_t, MASK, "grpo"), rtol=1e-5)
        m = MASK.astype(np.float64)
        want = np.where(live, -adv * s, 0.0) * m / np.maximum(m.sum(-1, keepdims=True), 1) / 3
        np.testing.assert_allclose(jax.grad(fn)(logps), want, rtol=1e-4, atol=1e-7)

    def test_kl_term(self):
        logps, old, adv = inputs(12)
        ref = logps + rand(13, scale=0.2)
        base, _ = pg.group_policy_loss(logps, old, adv, MASK, aggregation="grpo")
        out, metrics = pg.group_policy_loss(logps, old, adv, MASK, aggregation="grpo", ref_logps=ref, beta=0.1)
        d = ref.astype(np.float64) - logps
        k3 = np.exp(d) - d - 1
        np.testing.assert_allclose(out, base + 0.1 * np_aggregate(k3, MASK, "grpo"), rtol=1e-5)
        np.testing.assert_allclose(metrics["kl_ref"], np_aggregate(k3, MASK, "dapo"), rtol=1e-5)


class CISPOTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_value_and_gradient(self):
        # ℓ_t = -sg(min(ρ_t, 1 + ε_h)) A log π_t; d/d logp_t = -min(ρ_t, 1 + ε_h) A (the weight is
        # detached), times 1/Σm (token mean): every token keeps a gradient, clipped or not.
        logps, old, adv = inputs(14, spread=0.4)
        w = np.minimum(np.exp(logps.astype(np.float64) - old), 1.2)
        m = MASK.astype(np.float64)
        fn = partial(pg.group_policy_loss, loss="cispo", clip_eps_high=0.2)
        out, metrics = self.variant(fn)(logps, old, adv, MASK)
        np.testing.assert_allclose(out, np_aggregate(-w * adv * logps, MASK, "dapo"), rtol=1e-5)
        clipped = np.exp(logps.astype(np.float64) - old) > 1.2
        self.assertTrue(clipped[MASK.astype(bool)].any())
        np.testing.assert_allclose(metrics["clipfrac"], np_aggregate(clipped.astype(float), MASK, "dapo"),
                                   rtol=1e-6)
        g = jax.grad(lambda lp: fn(lp, old, adv, MASK)[0])(logps)
        np.testing.assert_allclose(g, -w * adv * m / m.sum(), rtol=1e-5, atol=1e-7)

    def test_unknown_loss(self):
        with self.assertRaises(ValueError):
            pg.group_policy_loss(*inputs(0), MASK, loss="sapo")


# --------------------------------------------------------------------------- TRL parity

def trl_grpo_loss(torch, per_token_logps, old, adv, mask, *, loss_type, level, eps_low, eps_high,
                  max_completion_length, beta=0.0, ref=None):
    """GRPOTrainer._compute_loss (trl/trainer/grpo_trainer.py lines 3083-3170), ported to
    plain tensors: one process, no gradient accumulation, no vLLM correction, no entropy mask,
    no delta (so ``num_items_in_batch`` is the batch's token count)."""
    log_ratio = per_token_logps - old
    if level == "token":
        log_importance_weights = log_ratio
    else:
        log_importance_weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        log_importance_weights = log_importance_weights.unsqueeze(-1)
    coef_1 = torch.exp(log_importance_weights)
    if beta != 0.0:
        per_token_kl = torch.exp(ref - per_token_logps) - (ref - per_token_logps) - 1
    if loss_type == "cispo":
        clamped_ratios = torch.clamp(coef_1, max=eps_high).detach()
        per_token_loss = -clamped_ratios * adv * per_token_logps
    else:
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
        per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)  # dapo, cispo


@pytest.mark.parametrize("loss_type, level, beta", [
    ("grpo", "token", 0.0), ("bnpo", "token", 0.0), ("dapo", "token", 0.04), ("dr_grpo", "token", 0.0),
    ("dr_grpo", "token", 0.04), ("grpo", "sequence", 0.0), ("grpo", "sequence", 0.04), ("cispo", "token", 0.0),
])
def test_trl_grpo_parity(loss_type, level, beta):
    torch = pytest.importorskip("torch")
    logps, old, adv = inputs(20, RAGGED, spread=0.4)
    ref = logps + rand(21, RAGGED.shape, 0.3)
    eps_low, eps_high = 0.2, 0.28
    tl = torch.tensor(logps, dtype=torch.float64, requires_grad=True)
    want = trl_grpo_loss(torch, tl, torch.tensor(old, dtype=torch.float64), torch.tensor(adv, dtype=torch.float64),
                         torch.tensor(RAGGED, dtype=torch.float64), loss_type=loss_type, level=level,
                         eps_low=eps_low, eps_high=1 + eps_high if loss_type == "cispo" else eps_high,
                         max_completion_length=8, beta=beta, ref=torch.tensor(ref, dtype=torch.float64))
    want.backward()
    ours = lambda lp: pg.group_policy_loss(
        lp, old, adv, RAGGED, loss="cispo" if loss_type == "cispo" else "clip", importance_sampling=level,
        clip_eps=eps_low, clip_eps_high=eps_high, aggregation="dapo" if loss_type == "cispo" else loss_type,
        max_completion_length=8, ref_logps=ref if beta else None, beta=beta)[0]
    np.testing.assert_allclose(ours(logps), want.item(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.grad(ours)(logps), tl.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_trl_rloo_parity():
    # RLOOTrainer._compute_loss (trl/trainer/rloo_trainer.py lines 1822-1833): one ratio per
    # sequence, exp(Σ_t logp − Σ_t old), clipped, mean over sequences; value and gradient.
    torch = pytest.importorskip("torch")
    logps, old, adv = inputs(24, RAGGED, spread=0.25)
    adv = adv[:, 0]
    tl = torch.tensor(logps, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(RAGGED, dtype=torch.float64)
    seq_logps = (tl * mask).sum(1)
    old_logps = (torch.tensor(old, dtype=torch.float64) * mask).sum(1)
    advantages = torch.tensor(adv, dtype=torch.float64)
    coef_1 = torch.exp(seq_logps - old_logps)
    coef_2 = torch.clamp(coef_1, 1 - 0.2, 1 + 0.2)
    want = (-torch.min(coef_1 * advantages, coef_2 * advantages)).mean()
    want.backward()
    live = (coef_1 * advantages <= coef_2 * advantages).detach().numpy()
    assert live.any() and not live.all()  # both branches of the min carry the loss somewhere
    ours = lambda lp: pg.group_policy_loss(lp, old, adv[:, None], RAGGED, importance_sampling="sequence_sum",
                                           aggregation="grpo")[0]
    np.testing.assert_allclose(ours(logps), want.item(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.grad(ours)(logps), tl.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_overlong_penalty_hand_example():
    # L_max 10, L_cache 4: free up to 6 tokens, then (6 − |y|)/4 down to −1 at 10, −1 beyond.
    out = pg.overlong_penalty(np.array([0, 6, 7, 8, 10, 11, 40]), max_length=10, buffer=4)
    np.testing.assert_allclose(out, [0, 0, -0.25, -0.5, -1, -1, -1])
    np.testing.assert_allclose(pg.overlong_penalty(np.array([9, 10, 11]), 10, 10), [-0.9, -1, -1])
    with pytest.raises(ValueError):
        pg.overlong_penalty(np.array([1]), 10, 0)
