"""GRPO: group-relative advantages and the clipped policy-gradient loss (TRL semantics).

Shapes: B completions (prompts x G, group-major: the G completions of a prompt are
consecutive), N completion tokens. `mask_BxN` marks completion tokens up to and
including the first EOS. Log-probabilities are per token under the (temperature-
scaled) policy; `old_logp` comes from the sampler at generation time, so with
`num_iterations` (mu) > 1 the ratio moves away from 1 after the first update.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


def _group(rewards_B: jax.Array, group_size: int) -> jax.Array:
  if rewards_B.shape[0] % group_size:
    raise ValueError(f"{rewards_B.shape[0]} rewards do not split into groups of {group_size}.")
  return rewards_B.reshape(-1, group_size)


def group_mean(rewards_B, group_size):
  """r - mean(group): the paper's setting (TRL scale_rewards=False, "Dr. GRPO")."""
  r_QxG = _group(rewards_B, group_size)
  return (r_QxG - r_QxG.mean(axis=1, keepdims=True)).reshape(-1)


def group_std(rewards_B, group_size):
  """(r - mean(group)) / (std(group, ddof=1) + 1e-4): the original GRPO."""
  r_QxG = _group(rewards_B, group_size)
  std_Qx1 = jnp.std(r_QxG, axis=1, ddof=1, keepdims=True)
  return ((r_QxG - r_QxG.mean(axis=1, keepdims=True)) / (std_Qx1 + 1e-4)).reshape(-1)


def batch_std(rewards_B, group_size):
  """(r - mean(group)) / (std(batch, ddof=1) + 1e-4): one scale for the whole batch."""
  return group_mean(rewards_B, group_size) / (jnp.std(rewards_B, ddof=1) + 1e-4)


ADVANTAGES: dict[str, Callable[[jax.Array, int], jax.Array]] = {
    "group_mean": group_mean, "group_std": group_std, "batch_std": batch_std}


def kl_k1(logp, ref_logp):
  return logp - ref_logp


def kl_k2(logp, ref_logp):
  return 0.5 * (ref_logp - logp) ** 2


def kl_k3(logp, ref_logp):
  """exp(ref - logp) - (ref - logp) - 1: unbiased, always >= 0 (the paper's)."""
  delta = ref_logp - logp
  return jnp.exp(delta) - delta - 1


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def _registered(table: dict, name: str, what: str):
  if name not in table:
    raise ValueError(f"Unknown {what} {name!r}; choose from {sorted(table)}.")
  return table[name]


def bnpo(per_token_BxN, mask_BxN, max_completion_length):
  """Sum over every completion token of the batch / their number (TRL 0.16, the paper's)."""
  del max_completion_length
  return (per_token_BxN * mask_BxN).sum() / jnp.maximum(mask_BxN.sum(), 1.0)


def grpo_mean(per_token_BxN, mask_BxN, max_completion_length):
  """Per-sequence token mean, then the mean over sequences (the original GRPO)."""
  del max_completion_length
  per_seq_B = (per_token_BxN * mask_BxN).sum(-1) / jnp.maximum(mask_BxN.sum(-1), 1.0)
  return per_seq_B.mean()


def dr_grpo(per_token_BxN, mask_BxN, max_completion_length):
  """Sum / (B x max completion length): no length bias (Dr. GRPO)."""
  return (per_token_BxN * mask_BxN).sum() / (mask_BxN.shape[0] * max_completion_length)


AGGREGATIONS = {"bnpo": bnpo, "grpo": grpo_mean, "dr_grpo": dr_grpo}


@dataclasses.dataclass(frozen=True)
class LossConfig:
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  beta: float = 0.04  # KL coefficient; 0 skips the reference model
  kl_estimator: str = "k3"
  aggregation: str = "bnpo"
  max_completion_length: int = 512  # the dr_grpo normaliser

  def __post_init__(self):
    _registered(KL_ESTIMATORS, self.kl_estimator, "KL estimator")
    _registered(AGGREGATIONS, self.aggregation, "loss aggregation")


def advantages(rewards_B: jax.Array, group_size: int, estimator: str = "group_mean") -> jax.Array:
  return _registered(ADVANTAGES, estimator, "advantage estimator")(rewards_B, group_size)


def loss(logp_BxN: jax.Array, old_logp_BxN: jax.Array, advantages_B: jax.Array,
         mask_BxN: jax.Array, config: LossConfig,
         ref_logp_BxN: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The clipped surrogate (+ beta x KL) loss and its diagnostics.

  per token: -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * KL,
  ratio = exp(logp - old_logp), aggregated over completion tokens by `config.aggregation`.
  """
  mask_BxN = mask_BxN.astype(logp_BxN.dtype)
  aggregate = lambda x: AGGREGATIONS[config.aggregation](x, mask_BxN,
                                                         config.max_completion_length)
  token_mean = lambda x: (x * mask_BxN).sum() / jnp.maximum(mask_BxN.sum(), 1.0)
  ratio_BxN = jnp.exp(logp_BxN - old_logp_BxN)
  clipped_BxN = jnp.clip(ratio_BxN, 1 - config.epsilon_low, 1 + config.epsilon_high)
  a_Bx1 = advantages_B[:, None]
  per_token_BxN = -jnp.minimum(ratio_BxN * a_Bx1, clipped_BxN * a_Bx1)
  metrics = {
      # As TRL logs them: where the clip is the active (smaller) term of the min.
      "clip_ratio/low": token_mean(((ratio_BxN < 1 - config.epsilon_low) & (a_Bx1 < 0))
                                   .astype(mask_BxN.dtype)),
      "clip_ratio/high": token_mean(((ratio_BxN > 1 + config.epsilon_high) & (a_Bx1 > 0))
                                    .astype(mask_BxN.dtype)),
      "ratio/mean": token_mean(ratio_BxN),
      "ratio/max": jnp.max(jnp.where(mask_BxN > 0, ratio_BxN, -jnp.inf)),
      "ratio/min": jnp.min(jnp.where(mask_BxN > 0, ratio_BxN, jnp.inf)),
  }
  if config.beta:
    if ref_logp_BxN is None:
      raise ValueError("beta > 0 needs the reference model's log-probabilities (ref_logp_BxN).")
    kl_BxN = KL_ESTIMATORS[config.kl_estimator](logp_BxN, ref_logp_BxN)
    per_token_BxN = per_token_BxN + config.beta * kl_BxN
    metrics["kl"] = token_mean(kl_BxN)
  value = aggregate(per_token_BxN)
  metrics["loss"] = value
  return value, metrics
