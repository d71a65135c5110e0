"""Calibration metrics over (confidence, correct) pairs, jittable.

ECE uses 10 equal-width bins with the paper's convention by default: the first bin is
[0, 0.1], the others (lower, upper]; `binning="left"` gives [lower, upper) bins and
`binning="mass"` equal-mass bins. Invalid responses count as wrong with confidence
1e-12 ("over all samples" in METHOD.md) unless the caller filters them out first.
"""

import jax
import jax.numpy as jnp


def bin_index(confidence_B: jax.Array, num_bins: int = 10, binning: str = "paper") -> jax.Array:
  """Bin of each confidence.

  paper: [0, 1/n] -> 0, then (k/n, (k+1)/n] -> k; left: [k/n, (k+1)/n) -> k (1.0 in the
  last bin); mass: equal-count bins by confidence rank (ties broken by position).
  """
  if binning == "paper":
    index_B = jnp.ceil(confidence_B * num_bins).astype(jnp.int32) - 1
  elif binning == "left":
    index_B = jnp.floor(confidence_B * num_bins).astype(jnp.int32)
  elif binning == "mass":
    rank_B = jnp.argsort(jnp.argsort(confidence_B, stable=True), stable=True)
    index_B = rank_B * num_bins // confidence_B.shape[0]
  else:
    raise ValueError(f"Unknown binning {binning!r}; choose from 'paper', 'left', 'mass'.")
  return jnp.clip(index_B, 0, num_bins - 1)


def _bins(confidence_B, correct_B, num_bins, binning):
  onehot_BxK = jax.nn.one_hot(bin_index(confidence_B, num_bins, binning), num_bins)
  count_K = onehot_BxK.sum(0)
  return (count_K, onehot_BxK.T @ correct_B.astype(jnp.float32),
          onehot_BxK.T @ confidence_B)


def ece(confidence_B: jax.Array, correct_B: jax.Array, num_bins: int = 10,
        binning: str = "paper") -> jax.Array:
  """Sum over bins of |accuracy - mean confidence| weighted by the bin's share of samples."""
  _, correct_K, confidence_K = _bins(confidence_B, correct_B, num_bins, binning)
  # |sum(correct) - sum(confidence)| per bin / B == share x |accuracy - mean confidence|.
  return jnp.abs(correct_K - confidence_K).sum() / confidence_B.shape[0]


def mce(confidence_B, correct_B, num_bins: int = 10, binning: str = "paper") -> jax.Array:
  """The largest |accuracy - mean confidence| over non-empty bins."""
  count_K, correct_K, confidence_K = _bins(confidence_B, correct_B, num_bins, binning)
  gap_K = jnp.abs(correct_K - confidence_K) / jnp.maximum(count_K, 1.0)
  return jnp.max(jnp.where(count_K > 0, gap_K, 0.0))


def ace(confidence_B, correct_B, num_bins: int = 10) -> jax.Array:
  """Adaptive calibration error: the unweighted mean gap over equal-mass bins."""
  count_K, correct_K, confidence_K = _bins(confidence_B, correct_B, num_bins, "mass")
  gap_K = jnp.abs(correct_K - confidence_K) / jnp.maximum(count_K, 1.0)
  return jnp.sum(jnp.where(count_K > 0, gap_K, 0.0)) / jnp.maximum((count_K > 0).sum(), 1)


def nll(confidence_B, correct_B, clip: float = 1e-12) -> jax.Array:
  """-mean log p(outcome) with the confidence as the probability of being right."""
  c_B = jnp.clip(confidence_B, clip, 1 - clip)
  y_B = correct_B.astype(jnp.float32)
  return -jnp.mean(y_B * jnp.log(c_B) + (1 - y_B) * jnp.log(1 - c_B))


def auroc(confidence_B, correct_B) -> jax.Array:
  """P(a right answer's confidence > a wrong one's), ties counting one half."""
  y_B = correct_B.astype(bool)
  greater_BxB = (confidence_B[:, None] > confidence_B[None, :]).astype(jnp.float32)
  equal_BxB = (confidence_B[:, None] == confidence_B[None, :]).astype(jnp.float32)
  pairs_BxB = (y_B[:, None] & ~y_B[None, :]).astype(jnp.float32)
  return ((greater_BxB + 0.5 * equal_BxB) * pairs_BxB).sum() / jnp.maximum(pairs_BxB.sum(), 1.0)


def aurc(confidence_B, correct_B) -> jax.Array:
  """Area under the risk-coverage curve: mean error rate of the k most confident, k = 1..B."""
  order_B = jnp.argsort(-confidence_B, stable=True)
  errors_B = 1.0 - correct_B.astype(jnp.float32)[order_B]
  return jnp.mean(jnp.cumsum(errors_B) / jnp.arange(1, confidence_B.shape[0] + 1))


def overconfident_error_rate(confidence_B, correct_B, threshold: float = 0.8) -> jax.Array:
  """Share of responses that are wrong with confidence >= threshold."""
  return jnp.mean((~correct_B.astype(bool)) & (confidence_B >= threshold))


def bootstrap(metric, confidence_B, correct_B, num_samples: int = 1000, seed: int = 0,
              level: float = 0.95) -> tuple[jax.Array, jax.Array]:
  """A percentile bootstrap interval of `metric(confidence_B, correct_B)`."""
  B = confidence_B.shape[0]
  index_SxB = jax.random.randint(jax.random.key(seed), (num_samples, B), 0, B)
  values_S = jax.vmap(lambda i: metric(confidence_B[i], correct_B[i]))(index_SxB)
  tail = (1 - level) / 2 * 100
  return jnp.percentile(values_S, tail), jnp.percentile(values_S, 100 - tail)


def brier(confidence_B: jax.Array, correct_B: jax.Array) -> jax.Array:
  return jnp.mean((confidence_B - correct_B) ** 2)


def summary(confidence_B, valid_B, correct_B, num_bins: int = 10) -> dict[str, jax.Array]:
  """Accuracy, ECE, Brier (invalid = wrong at confidence 1e-12) and the invalid rate."""
  confidence_B = jnp.where(valid_B, confidence_B, 1e-12)
  correct_B = (correct_B & valid_B).astype(jnp.float32)
  return {"accuracy": correct_B.mean(), "ece": ece(confidence_B, correct_B, num_bins),
          "mce": mce(confidence_B, correct_B, num_bins), "brier": brier(confidence_B, correct_B),
          "nll": nll(confidence_B, correct_B), "auroc": auroc(confidence_B, correct_B),
          "aurc": aurc(confidence_B, correct_B),
          "overconfident_errors": overconfident_error_rate(confidence_B, correct_B),
          "invalid_rate": 1.0 - valid_B.astype(jnp.float32).mean(),
          "confidence/mean": confidence_B.mean(), "confidence/std": confidence_B.std()}
