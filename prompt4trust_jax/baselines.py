"""Confidences from several sampled answers to one question (METHOD.md, "Baselines").

Inputs are per question S sampled answers: `letter_BxS` (option index, -1 when the
response did not parse), `confidence_BxS` (verbalized, in [0, 1]) and `valid_BxS`.

- Sample consistency (CSC) and average confidence (CSA): the answer is the first sample;
  CSC = share of the other S-1 samples that agree with it; CSA = the agreeing samples'
  confidences summed over all S-1 confidences. An invalid first sample is an invalid
  response; invalid other samples count as disagreeing (with confidence 0).
- Entropy: the answer is the most frequent valid letter (ties: the lowest index) and the
  confidence 1 - H(letter frequencies) / log(K) over the valid samples; no valid
  sample is an invalid response.
"""

import jax
import jax.numpy as jnp


def sample_consistency(letter_BxS: jax.Array, confidence_BxS: jax.Array, valid_BxS: jax.Array
                       ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`(letter_B, csc_B, csa_B, valid_B)` from S >= 2 samples per question."""
  if letter_BxS.shape[1] < 2:
    raise ValueError(f"Sample consistency needs >= 2 samples per question, got "
                     f"{letter_BxS.shape[1]}.")
  first_B, valid_B = letter_BxS[:, 0], valid_BxS[:, 0]
  others_valid = valid_BxS[:, 1:]
  agree_BxR = (letter_BxS[:, 1:] == first_B[:, None]) & others_valid
  csc_B = agree_BxR.mean(axis=1)
  others_conf_BxR = jnp.where(others_valid, confidence_BxS[:, 1:], 0.0)
  total_B = others_conf_BxR.sum(axis=1)
  agreeing_B = jnp.where(agree_BxR, others_conf_BxR, 0.0).sum(axis=1)
  # No confidence among the others: nothing supports the answer.
  csa_B = jnp.where(total_B > 0, agreeing_B / jnp.where(total_B > 0, total_B, 1.0), 0.0)
  zero = jnp.zeros_like(csc_B)
  return (jnp.where(valid_B, first_B, -1), jnp.where(valid_B, csc_B, zero),
          jnp.where(valid_B, csa_B, zero), valid_B)


def entropy_confidence(letter_BxS: jax.Array, valid_BxS: jax.Array, num_options: int = 4
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(letter_B, confidence_B, valid_B)`: the modal letter and 1 - normalised entropy."""
  counts_BxK = (jax.nn.one_hot(letter_BxS, num_options) * valid_BxS[..., None]).sum(axis=1)
  n_B = counts_BxK.sum(axis=1)
  valid_B = n_B > 0
  p_BxK = counts_BxK / jnp.maximum(n_B, 1.0)[:, None]
  entropy_B = -jnp.sum(jnp.where(p_BxK > 0, p_BxK * jnp.log(jnp.where(p_BxK > 0, p_BxK, 1.0)),
                                 0.0), axis=1)
  confidence_B = jnp.where(valid_B, 1.0 - entropy_B / jnp.log(num_options), 0.0)
  letter_B = jnp.where(valid_B, jnp.argmax(counts_BxK, axis=1), -1)
  return letter_B, confidence_B, valid_B
