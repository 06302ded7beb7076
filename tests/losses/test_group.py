"""Tests for jaxalign/losses/group.py: numpy, hand examples, and TRL's formulas."""

from functools import partial

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxalign.losses import group


def rewards(seed=0, n=3, g=4):
    return np.random.default_rng(seed).normal(1.0, 2.0, (n, g)).astype(np.float32)


class GRPOTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("group", "batch", "none")
    def test_against_numpy(self, scale):
        r = rewards().astype(np.float64)
        out = self.variant(partial(group.grpo_advantages, scale=scale))(r.astype(np.float32))
        centred = r - r.mean(1, keepdims=True)
        if scale == "group":
            want = centred / (r.std(1, ddof=1, keepdims=True) + 1e-4)
        elif scale == "batch":
            want = centred / (r.std(ddof=1) + 1e-4)
        else:
            want = centred
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)

    def test_hand_example(self):
        # group [0, 2]: mean 1, unbiased std sqrt(2) -> ±1/(sqrt 2 + 1e-4)
        out = group.grpo_advantages(jnp.array([[0.0, 2.0]]))
        np.testing.assert_allclose(out, [[-1 / (np.sqrt(2) + 1e-4), 1 / (np.sqrt(2) + 1e-4)]], rtol=1e-6)
        # a constant group has zero advantage (no NaN)
        np.testing.assert_array_equal(group.grpo_advantages(jnp.ones((1, 4))), 0.0)

    def test_mask_removes_samples(self):
        r = rewards(1)
        m = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
        bad = np.where(m.astype(bool), r, np.nan).astype(np.float32)
        out = np.asarray(group.grpo_advantages(bad, m))
        ref0 = group.grpo_advantages(r[:1, :3])
        np.testing.assert_allclose(out[0, :3], ref0[0], rtol=1e-6)
        np.testing.assert_array_equal(out[~m.astype(bool)], 0.0)
        np.testing.assert_array_equal(out[2], 0.0)  # a single valid sample: A = 0

    @parameterized.parameters("group", "batch", "none")
    def test_trl_parity(self, scale):
        # GRPOTrainer._generate_and_score_completions needs a model and generation; its
        # advantage formula (trl/trainer/grpo_trainer.py lines 2765-2787, flat prompt-major
        # rewards with num_generations per prompt) is reproduced in torch, with TRL's own nanstd.
        torch = pytest.importorskip("torch")
        pytest.importorskip("trl")
        from trl.trainer.utils import nanstd
        num_generations = 4
        r = rewards(2, n=5, g=num_generations)
        t = torch.tensor(r.reshape(-1))
        mean_grouped = torch.nanmean(t.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
        if scale in ("group", "none"):
            std = nanstd(t.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
        else:
            std = nanstd(t).expand_as(t)
        adv = t - mean_grouped
        if scale != "none":
            adv = adv / (std + 1e-4)
        out = group.grpo_advantages(r, scale=scale)
        np.testing.assert_allclose(np.asarray(out).reshape(-1), adv.numpy(), rtol=1e-5, atol=1e-5)


class RLOOTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_against_numpy(self):
        r = rewards(3).astype(np.float64)
        out = self.variant(group.rloo_advantages)(r.astype(np.float32))
        g = r.shape[1]
        want = np.array([[r[i, j] - (r[i].sum() - r[i, j]) / (g - 1) for j in range(g)] for i in range(3)])
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)

    def test_hand_example(self):
        # [1, 2, 6]: baselines (2+6)/2=4, (1+6)/2=3.5, (1+2)/2=1.5
        out = group.rloo_advantages(jnp.array([[1.0, 2.0, 6.0]]))
        np.testing.assert_allclose(out, [[-3.0, -1.5, 4.5]], rtol=1e-6)

    def test_mask(self):
        r = np.array([[1.0, 2.0, 6.0, np.nan], [5.0, np.inf, np.nan, np.nan]], np.float32)
        m = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
        out = np.asarray(group.rloo_advantages(r, m))
        np.testing.assert_allclose(out[0, :3], [-3.0, -1.5, 4.5], rtol=1e-6)
        np.testing.assert_array_equal(out[0, 3], 0.0)
        np.testing.assert_array_equal(out[1], 0.0)

    def test_trl_parity_with_kl_shaping_and_normalisation(self):
        # RLOOTrainer's reward shaping and advantages (trl/trainer/rloo_trainer.py lines
        # 1669-1699) reproduced in torch with TRL's own nanstd.
        torch = pytest.importorskip("torch")
        pytest.importorskip("trl")
        from trl.trainer.utils import nanstd
        rng = np.random.default_rng(4)
        n, g, t_len, beta = 3, 4, 6, 0.05
        scores = rng.standard_normal(n * g).astype(np.float32)
        old = rng.standard_normal((n * g, t_len)).astype(np.float32)
        ref = rng.standard_normal((n * g, t_len)).astype(np.float32)
        mask = (np.arange(t_len)[None] < rng.integers(1, t_len + 1, n * g)[:, None]).astype(np.int64)
        per_token_kl = torch.tensor(old) - torch.tensor(ref)
        kl = (per_token_kl * torch.tensor(mask)).sum(-1)
        rw = torch.tensor(scores) - beta * kl
        grouped = rw.view(-1, g)
        counts = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
        baselines = (torch.nansum(grouped, dim=1, keepdim=True) - grouped) / (counts - 1)
        adv = rw - baselines.view(-1)
        adv_norm = (adv - torch.nanmean(adv)) / (nanstd(adv) + 1e-4)

        shaped = group.kl_shaped_rewards(scores, old, ref, mask, kl_coef=beta)
        np.testing.assert_allclose(shaped, rw.numpy(), rtol=1e-5, atol=1e-5)
        ours = group.rloo_advantages(shaped.reshape(n, g))
        np.testing.assert_allclose(np.asarray(ours).reshape(-1), adv.numpy(), rtol=1e-5, atol=1e-5)
        ours_n = group.rloo_advantages(shaped.reshape(n, g), normalize=True)
        np.testing.assert_allclose(np.asarray(ours_n).reshape(-1), adv_norm.numpy(), rtol=1e-5, atol=1e-5)
