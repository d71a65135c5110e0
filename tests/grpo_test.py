"""GRPO advantages, KL estimators and losses against hand-worked and NumPy values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt4trust_jax.training import grpo

REWARDS = jnp.array([1.0, 0.0, 2.0, 2.0])  # two prompts x G=2


def test_advantages_by_hand():
  np.testing.assert_allclose(grpo.advantages(REWARDS, 2, "group_mean"), [0.5, -0.5, 0, 0])
  s = math.sqrt(0.5)  # std([1, 0], ddof=1)
  np.testing.assert_allclose(grpo.advantages(REWARDS, 2, "group_std"),
                             [0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0, 0], rtol=1e-6)
  batch = math.sqrt(2.75 / 3)  # std([1, 0, 2, 2], ddof=1)
  np.testing.assert_allclose(grpo.advantages(REWARDS, 2, "batch_std"),
                             np.array([0.5, -0.5, 0, 0]) / (batch + 1e-4), rtol=1e-6)
  with pytest.raises(ValueError, match="groups of 3"):
    grpo.advantages(REWARDS, 3)
  with pytest.raises(ValueError, match="Unknown advantage estimator"):
    grpo.advantages(REWARDS, 2, "vibes")


# Row 0 (A = +0.5): ratios 1, 1.5 (clipped to 1.2), 0.5 (min keeps the unclipped 0.25).
# Row 1 (A = -0.5): ratios 0.5 (clipped to 0.8), 1.5 (min keeps -0.75), 1 (masked out).
RATIOS = np.array([[1.0, 1.5, 0.5], [0.5, 1.5, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
MASK = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], np.float32)
OLD = np.full((4, 3), -1.0, np.float32)
LOGP = (OLD + np.log(RATIOS)).astype(np.float32)
# Masked per-token losses: row 0: -0.5, -0.6, -0.25; row 1: +0.4, +0.75; rows 2-3: 0.
EXPECTED = {"bnpo": -0.2 / 9, "grpo": (-1.35 / 3 + 1.15 / 2) / 4, "dr_grpo": -0.2 / 12}


@pytest.mark.parametrize("aggregation", sorted(EXPECTED))
def test_clipped_loss_by_hand(aggregation):
  config = grpo.LossConfig(beta=0.0, aggregation=aggregation, max_completion_length=3)
  adv = grpo.advantages(REWARDS, 2)
  value, metrics = grpo.loss(jnp.asarray(LOGP), jnp.asarray(OLD), adv, jnp.asarray(MASK), config)
  assert value == pytest.approx(EXPECTED[aggregation], abs=1e-6)
  assert metrics["clip_ratio/low"] == pytest.approx(1 / 9)  # row 1, token 0
  assert metrics["clip_ratio/high"] == pytest.approx(1 / 9)  # row 0, token 1
  assert metrics["ratio/max"] == pytest.approx(1.5, rel=1e-6)
  assert metrics["ratio/min"] == pytest.approx(0.5, rel=1e-6)


def test_kl_estimators_by_hand():
  logp, ref = jnp.array([-1.0, -2.0]), jnp.array([-1.1, -1.5])
  delta = np.array([-0.1, 0.5])  # ref - logp
  np.testing.assert_allclose(grpo.kl_k1(logp, ref), -delta, rtol=1e-6)
  np.testing.assert_allclose(grpo.kl_k2(logp, ref), delta**2 / 2, rtol=1e-6)
  np.testing.assert_allclose(grpo.kl_k3(logp, ref), np.exp(delta) - delta - 1, rtol=1e-5)


def test_kl_term_adds_beta_times_token_mean():
  config = grpo.LossConfig(beta=0.04, kl_estimator="k3", aggregation="bnpo")
  adv = grpo.advantages(REWARDS, 2)
  value, metrics = grpo.loss(jnp.asarray(LOGP), jnp.asarray(OLD), adv, jnp.asarray(MASK), config,
                             jnp.asarray(LOGP + 0.1))
  k3 = math.exp(0.1) - 0.1 - 1
  assert metrics["kl"] == pytest.approx(k3, rel=1e-5)
  assert value == pytest.approx(-0.2 / 9 + 0.04 * k3, abs=1e-6)
  with pytest.raises(ValueError, match="ref_logp"):
    grpo.loss(jnp.asarray(LOGP), jnp.asarray(OLD), adv, jnp.asarray(MASK), config)


def _numpy_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, aggregation, max_len):
  ratio = np.exp(logp - old)
  per = -np.minimum(ratio * adv[:, None], np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv[:, None])
  per = per + beta * (np.exp(ref - logp) - (ref - logp) - 1)
  if aggregation == "bnpo":
    return (per * mask).sum() / mask.sum()
  if aggregation == "grpo":
    return np.mean((per * mask).sum(1) / mask.sum(1))
  return (per * mask).sum() / (mask.shape[0] * max_len)


@pytest.mark.parametrize("aggregation", sorted(EXPECTED))
def test_loss_matches_numpy_after_updates(aggregation):
  rng = np.random.default_rng(0)
  B, N = 8, 6
  old = -rng.random((B, N)) * 3
  logp = old + rng.normal(0, 0.4, (B, N))  # mu > 1: the policy has moved since sampling
  ref = old + rng.normal(0, 0.2, (B, N))
  mask = (np.arange(N)[None] < rng.integers(1, N + 1, B)[:, None]).astype(np.float32)
  rewards = rng.normal(size=B)
  adv = np.asarray(grpo.advantages(jnp.asarray(rewards), 4, "group_std"))
  config = grpo.LossConfig(epsilon_low=0.2, epsilon_high=0.28, beta=0.04,
                           aggregation=aggregation, max_completion_length=N)
  value, metrics = grpo.loss(*(jnp.asarray(x, jnp.float32) for x in (logp, old, adv, mask)),
                             config, jnp.asarray(ref, jnp.float32))
  expected = _numpy_loss(logp, old, ref, adv, mask, 0.2, 0.28, 0.04, aggregation, N)
  assert value == pytest.approx(expected, rel=1e-5)
  assert 0 < metrics["clip_ratio/low"] + metrics["clip_ratio/high"] < 1


def test_gradient_at_ratio_one_is_the_policy_gradient():
  adv = grpo.advantages(REWARDS, 2)
  config = grpo.LossConfig(beta=0.0)
  grad = jax.grad(lambda lp: grpo.loss(lp, jnp.asarray(OLD), adv, jnp.asarray(MASK), config)[0])(
      jnp.asarray(OLD))
  np.testing.assert_allclose(grad, -np.asarray(adv)[:, None] * MASK / MASK.sum(), atol=1e-7)
