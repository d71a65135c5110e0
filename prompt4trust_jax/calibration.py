"""Calibration metrics over (confidence, correct) pairs, jittable.

ECE uses 10 equal-width bins with the paper's convention by default: the first bin is
[0, 0.1], the others (lower, upper]; `binning="left"` gives [lower, upper) bins and
`binning="mass"` equal-mass bins. Invalid responses count as wrong with confidence
1e-12 (the paper's "over all samples") unless the caller filters them out first;
`population_metrics` reports both populations. `fit_temperature` / `apply_temperature` are
the temperature-scaling baseline over option logits (C = answer choices).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax


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
  onehot_BxZ = jax.nn.one_hot(bin_index(confidence_B, num_bins, binning), num_bins)
  count_Z = onehot_BxZ.sum(0)
  return (count_Z, onehot_BxZ.T @ correct_B.astype(jnp.float32),
          onehot_BxZ.T @ confidence_B)


def ece(confidence_B: jax.Array, correct_B: jax.Array, num_bins: int = 10,
        binning: str = "paper") -> jax.Array:
  """Sum over bins of |accuracy - mean confidence| weighted by the bin's share of samples."""
  _, correct_Z, confidence_Z = _bins(confidence_B, correct_B, num_bins, binning)
  # |sum(correct) - sum(confidence)| per bin / B == share x |accuracy - mean confidence|.
  return jnp.abs(correct_Z - confidence_Z).sum() / confidence_B.shape[0]


def reliability_bins(confidence_B, correct_B, num_bins: int = 10,
                     binning: str = "paper") -> tuple[jax.Array, jax.Array, jax.Array]:
  """(count_Z, accuracy_Z, mean confidence_Z) per bin; accuracy and confidence NaN when empty."""
  count_Z, correct_Z, confidence_Z = _bins(confidence_B, correct_B, num_bins, binning)
  safe_Z = jnp.where(count_Z > 0, count_Z, jnp.nan)
  return count_Z, correct_Z / safe_Z, confidence_Z / safe_Z


def mce(confidence_B, correct_B, num_bins: int = 10, binning: str = "paper") -> jax.Array:
  """The largest |accuracy - mean confidence| over non-empty bins."""
  count_Z, correct_Z, confidence_Z = _bins(confidence_B, correct_B, num_bins, binning)
  gap_Z = jnp.abs(correct_Z - confidence_Z) / jnp.maximum(count_Z, 1.0)
  return jnp.max(jnp.where(count_Z > 0, gap_Z, 0.0))


def ace(confidence_B, correct_B, num_bins: int = 10) -> jax.Array:
  """Adaptive calibration error: the unweighted mean gap over equal-mass bins."""
  count_Z, correct_Z, confidence_Z = _bins(confidence_B, correct_B, num_bins, "mass")
  gap_Z = jnp.abs(correct_Z - confidence_Z) / jnp.maximum(count_Z, 1.0)
  return jnp.sum(jnp.where(count_Z > 0, gap_Z, 0.0)) / jnp.maximum((count_Z > 0).sum(), 1)


def nll(confidence_B, correct_B, clip: float = 1e-12) -> jax.Array:
  """-mean log p(outcome) with the confidence as the probability of being right."""
  # Clip the outcome's probability, not c: 1 - 1e-12 rounds to 1 in float32, so clipping c
  # left log(1 - c) = -inf and 0 * -inf = NaN for a right answer at c = 1.
  p_B = jnp.where(correct_B.astype(bool), confidence_B, 1 - confidence_B)
  return -jnp.mean(jnp.log(jnp.maximum(p_B, clip)))


def auroc(confidence_B, correct_B) -> jax.Array:
  """P(a right answer's confidence > a wrong one's), ties counting one half.

  NaN when there is no (right, wrong) pair: all right or all wrong leaves it undefined.
  """
  y_B = correct_B.astype(bool)
  # Sorted wrong confidences (right ones pushed to +inf): counting those below / equal to each
  # right answer is O(B log B), where the pairwise form needs B x B memory (x bootstrap samples).
  wrong_B = jnp.sort(jnp.where(y_B, jnp.inf, confidence_B))
  below_B = jnp.searchsorted(wrong_B, confidence_B, side="left")
  tied_B = jnp.searchsorted(wrong_B, confidence_B, side="right") - below_B
  wins = jnp.sum(jnp.where(y_B, below_B + 0.5 * tied_B, 0.0))
  right = y_B.sum().astype(jnp.float32)
  pairs = right * (y_B.shape[0] - right)
  return jnp.where(pairs > 0, wins / jnp.maximum(pairs, 1.0), jnp.nan)


def selective_risk_curve(confidence_B, correct_B) -> tuple[jax.Array, jax.Array]:
  """(coverage, risk) per row, most confident first, at that row's confidence threshold.

  Tied confidences share one threshold: a row's coverage is the share of rows with
  confidence >= its own and its risk the error rate among them, so the curve has one point
  per distinct confidence (repeated once per tied row) and does not depend on row order.
  """
  B = confidence_B.shape[0]
  order_B = jnp.argsort(-confidence_B)
  wrong_so_far_B = jnp.cumsum(1.0 - correct_B.astype(jnp.float32)[order_B])
  # The last sorted index of each row's tie group: everything up to it passes its threshold.
  negated_B = -confidence_B[order_B]
  last_B = jnp.searchsorted(negated_B, negated_B, side="right") - 1
  kept_B = (last_B + 1).astype(jnp.float32)
  return kept_B / B, wrong_so_far_B[last_B] / kept_B


def aurc(confidence_B, correct_B) -> jax.Array:
  """Area under the risk-coverage step curve, ties sharing a threshold.

  Each row adds 1/B times the risk at its threshold (`selective_risk_curve`), so a tie group
  is one step and the value does not depend on row order; without ties it is the mean risk
  of the k most confident, k = 1..B.
  """
  return jnp.mean(selective_risk_curve(confidence_B, correct_B)[1])


def overconfident_error_rate(confidence_B, correct_B, threshold: float = 0.8) -> jax.Array:
  """Share of responses that are wrong with confidence >= threshold."""
  return jnp.mean((~correct_B.astype(bool)) & (confidence_B >= threshold))


def bootstrap(metric, confidence_B, correct_B, num_samples: int = 1000, seed: int = 0,
              level: float = 0.95) -> tuple[jax.Array, jax.Array]:
  """A percentile bootstrap interval of `metric(confidence_B, correct_B)`.

  Resamples where the metric is undefined (NaN, e.g. AUROC of an all-right resample) are
  left out; the interval is NaN only if every resample is.
  """
  B = confidence_B.shape[0]
  index_SxB = jax.random.randint(jax.random.key(seed), (num_samples, B), 0, B)
  values_S = jax.vmap(lambda i: metric(confidence_B[i], correct_B[i]))(index_SxB)
  tail = (1 - level) / 2 * 100
  return jnp.nanpercentile(values_S, tail), jnp.nanpercentile(values_S, 100 - tail)


def brier(confidence_B: jax.Array, correct_B: jax.Array) -> jax.Array:
  return jnp.mean((confidence_B - correct_B) ** 2)


def _over_all(confidence_B, correct_B, valid_B):
  """The "all samples" population: an invalid response is wrong at confidence 1e-12."""
  return (jnp.where(valid_B, confidence_B, 1e-12),
          (correct_B.astype(bool) & valid_B.astype(bool)).astype(jnp.float32))


def summary(confidence_B, valid_B, correct_B, num_bins: int = 10) -> dict[str, jax.Array]:
  """Accuracy, ECE, Brier (invalid = wrong at confidence 1e-12) and the invalid rate."""
  confidence_B, correct_B = _over_all(confidence_B, correct_B, valid_B)
  return {"accuracy": correct_B.mean(), "ece": ece(confidence_B, correct_B, num_bins),
          "mce": mce(confidence_B, correct_B, num_bins), "brier": brier(confidence_B, correct_B),
          "nll": nll(confidence_B, correct_B), "auroc": auroc(confidence_B, correct_B),
          "aurc": aurc(confidence_B, correct_B),
          "overconfident_errors": overconfident_error_rate(confidence_B, correct_B),
          "invalid_rate": 1.0 - valid_B.astype(jnp.float32).mean(),
          "confidence/mean": confidence_B.mean(), "confidence/std": confidence_B.std()}


BOOTSTRAPPED = ("accuracy", "ece", "brier", "auroc", "aurc")


def _metric_table(num_bins, binning, threshold):
  """population_metrics' metrics by name, each a function of (confidence_B, correct_B)."""
  return {
      "accuracy": lambda c, y: jnp.mean(y),
      "ece": lambda c, y: ece(c, y, num_bins, binning),
      "ece_left": lambda c, y: ece(c, y, num_bins, "left"),
      "ece_mass": lambda c, y: ece(c, y, num_bins, "mass"),
      "mce": lambda c, y: mce(c, y, num_bins, binning),
      "ace": lambda c, y: ace(c, y, num_bins),
      "brier": brier, "nll": nll, "auroc": auroc, "aurc": aurc,
      "overconfident_errors": lambda c, y: overconfident_error_rate(c, y, threshold),
      "confidence_mean": lambda c, y: jnp.mean(c),
      "confidence_std": lambda c, y: jnp.std(c)}


# Jitted as a whole: run eagerly, the vmapped bootstraps dispatch op by op and take seconds.
@functools.partial(jax.jit, static_argnames=("num_bins", "binning", "bootstrap_samples"))
def _population(confidence_B, correct_B, threshold, seed, *, num_bins, binning,
                bootstrap_samples):
  """Every metric of one non-empty population, and the bootstrap intervals."""
  metrics = _metric_table(num_bins, binning, threshold)
  out = {name: metric(confidence_B, correct_B) for name, metric in metrics.items()}
  for name in BOOTSTRAPPED:
    out[name + "_ci"] = jnp.stack(bootstrap(metrics[name], confidence_B, correct_B,
                                            bootstrap_samples, seed))
  return out


def population_metrics(confidence_B, correct_B, valid_B, *, num_bins: int = 10,
                       binning: str = "paper", threshold: float = 0.8,
                       bootstrap_samples: int = 1000, seed: int = 0) -> dict:
  """Every metric over "all" samples (invalid = wrong at 1e-12) and over "valid" ones only.

  Host-side; returns a flat dict of Python numbers: "invalid_rate", then per population P in
  ("all", "valid"): "P/count" (int), "P/<metric>" for accuracy, ece (`binning`), ece_left,
  ece_mass, mce, ace, brier, nll, auroc, aurc, overconfident_errors (wrong at c >= threshold),
  confidence_mean, confidence_std, and "P/<metric>_ci" = [low, high], the 95% percentile
  bootstrap interval, for each metric in BOOTSTRAPPED. Undefined values are NaN (an empty
  population, AUROC without both right and wrong answers); json.dumps writes them as NaN.
  """
  confidence_B = np.asarray(confidence_B, np.float32)
  correct_B, valid_B = np.asarray(correct_B, bool), np.asarray(valid_B, bool)
  if not (confidence_B.ndim == 1 and confidence_B.shape == correct_B.shape == valid_B.shape):
    raise ValueError(f"confidence_B, correct_B, valid_B must be 1-D of one length; got shapes "
                     f"{confidence_B.shape}, {correct_B.shape}, {valid_B.shape}.")
  out = {"invalid_rate": float(1.0 - valid_B.mean()) if valid_B.size else math.nan}
  populations = {"all": _over_all(confidence_B, correct_B, valid_B),
                 "valid": (confidence_B[valid_B], correct_B[valid_B].astype(np.float32))}
  for population, (c_B, y_B) in populations.items():
    out[f"{population}/count"] = int(c_B.shape[0])
    if c_B.shape[0]:
      values = _population(jnp.asarray(c_B), jnp.asarray(y_B), threshold, seed,
                           num_bins=num_bins, binning=binning,
                           bootstrap_samples=bootstrap_samples)
    else:  # Same keys, every value undefined.
      values = {name: math.nan for name in _metric_table(num_bins, binning, threshold)}
      values.update({name + "_ci": [math.nan, math.nan] for name in BOOTSTRAPPED})
    for name, value in values.items():
      out[f"{population}/{name}"] = np.asarray(value).tolist()
  return out


def _temperature_nll(log_t, logits_BxC, label_B):
  logp_BxC = jax.nn.log_softmax(logits_BxC * jnp.exp(-log_t), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp_BxC, label_B[:, None], axis=-1))


@functools.partial(jax.jit, static_argnames=("grid_size", "max_steps"))
def fit_temperature(logits_BxC: jax.Array, label_B: jax.Array, *, t_min: float = 0.05,
                    t_max: float = 20.0, grid_size: int = 64, max_steps: int = 50,
                    tol: float = 1e-6) -> jax.Array:
  """The T in [t_min, t_max] minimising the mean NLL of softmax(logits / T) at the labels.

  Fit it on a validation split. `logits_BxC` may be log option probabilities: a per-row
  constant does not change the softmax. They must be finite (clip log-probabilities, e.g. at
  log 1e-12). Log T is searched on a grid, then refined with L-BFGS (zoom line search);
  the NLL is unimodal in log T (convex in 1/T), so the grid only guards against flat starts.
  Deterministic and jitted; returns a scalar array (float(...) it on the host).
  """
  if logits_BxC.ndim != 2 or label_B.shape != logits_BxC.shape[:1]:
    raise ValueError(f"fit_temperature wants logits_BxC [B, C] and label_B [B]; got shapes "
                     f"{logits_BxC.shape} and {label_B.shape}.")
  loss = functools.partial(_temperature_nll, logits_BxC=logits_BxC, label_B=label_B)
  low, high = jnp.log(t_min), jnp.log(t_max)
  grid = jnp.linspace(low, high, grid_size)
  start = grid[jnp.argmin(jax.vmap(loss)(grid))]
  optimizer = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    log_t, state = carry
    value, grad = value_and_grad(log_t, state=state)
    updates, state = optimizer.update(grad, state, log_t, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(log_t, updates), state

  def running(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    return (count == 0) | ((count < max_steps) & (jnp.abs(optax.tree.get(state, "grad")) > tol))

  log_t, _ = jax.lax.while_loop(running, step, (start, optimizer.init(start)))
  # Separable data (the gold option always on top) pulls T to 0: the bounds keep it finite.
  return jnp.exp(jnp.clip(log_t, low, high))


def apply_temperature(logits_BxC: jax.Array, temperature) -> jax.Array:
  """softmax(logits / T) over the options: the temperature-scaled option probabilities."""
  return jax.nn.softmax(logits_BxC / temperature, axis=-1)
