"""Calibration metrics over (confidence, correct) pairs, jittable.

ECE uses 10 equal-width bins with the paper's convention: the first bin is [0, 0.1],
the others (lower, upper]. Invalid responses count as wrong with confidence 1e-12
("over all samples" in METHOD.md) unless the caller filters them out first.
"""

import jax
import jax.numpy as jnp


def bin_index(confidence_B: jax.Array, num_bins: int = 10) -> jax.Array:
  """Bin of each confidence: [0, 1/n] -> 0, then (k/n, (k+1)/n] -> k."""
  return jnp.clip(jnp.ceil(confidence_B * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)


def ece(confidence_B: jax.Array, correct_B: jax.Array, num_bins: int = 10) -> jax.Array:
  """Sum over bins of |accuracy - mean confidence| weighted by the bin's share of samples."""
  bins_B = bin_index(confidence_B, num_bins)
  onehot_BxK = jax.nn.one_hot(bins_B, num_bins)
  # |sum(correct) - sum(confidence)| per bin / B == share x |accuracy - mean confidence|.
  gap_K = jnp.abs(onehot_BxK.T @ correct_B.astype(jnp.float32) - onehot_BxK.T @ confidence_B)
  return gap_K.sum() / confidence_B.shape[0]


def brier(confidence_B: jax.Array, correct_B: jax.Array) -> jax.Array:
  return jnp.mean((confidence_B - correct_B) ** 2)


def summary(confidence_B, valid_B, correct_B, num_bins: int = 10) -> dict[str, jax.Array]:
  """Accuracy, ECE, Brier (invalid = wrong at confidence 1e-12) and the invalid rate."""
  confidence_B = jnp.where(valid_B, confidence_B, 1e-12)
  correct_B = (correct_B & valid_B).astype(jnp.float32)
  return {"accuracy": correct_B.mean(), "ece": ece(confidence_B, correct_B, num_bins),
          "brier": brier(confidence_B, correct_B),
          "invalid_rate": 1.0 - valid_B.astype(jnp.float32).mean(),
          "confidence/mean": confidence_B.mean()}
