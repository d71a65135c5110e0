"""Confidences from several sampled answers to one question (the original's baselines).

Inputs are per question S sampled answers: `letter_BxS` (option index, -1 when the
response did not parse), `confidence_BxS` (verbalized, in [0, 1]) and `valid_BxS`.

- Sample consistency (CSC) and average confidence (CSA): the answer is the first sample;
  CSC = share of the other S-1 samples that agree with it; CSA = the agreeing samples'
  confidences summed over all S-1 confidences. Two validity rules:
  - "all" (the original's csc.py): a question is valid only if all S samples parse. An
    unparsed sample has answer -1 and confidence 1e-12 (the original's penalty), so when the
    first is unparsed the unparsed others "agree" with it: its CSC is their share and its
    CSA their tiny confidences over all (denominator + 1e-12, as there).
  - "first": valid when the first sample is; unparsed other samples disagree (confidence 0).
- Entropy: the answer is the most frequent valid letter (ties: the lowest index) and the
  confidence 1 - H(letter frequencies) / log(K) over the valid samples; no valid
  sample is an invalid response.
"""

import jax
import jax.numpy as jnp


INVALID_CONFIDENCE = 1e-12  # the original's confidence of an unparsed response


def sample_consistency(letter_BxS: jax.Array, confidence_BxS: jax.Array, valid_BxS: jax.Array,
                       valid: str = "all") -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`(letter_B, csc_B, csa_B, valid_B)` from S >= 2 samples per question (module docstring)."""
  if letter_BxS.shape[1] < 2:
    raise ValueError(f"Sample consistency needs >= 2 samples per question, got "
                     f"{letter_BxS.shape[1]}.")
  if valid == "all":
    return _consistency_all_valid(letter_BxS, confidence_BxS, valid_BxS.astype(bool))
  if valid != "first":
    raise ValueError(f"Unknown consistency validity rule {valid!r}; choose 'all' or 'first'.")
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


def _consistency_all_valid(letter_BxS, confidence_BxS, valid_BxS):
  letter_BxS = jnp.where(valid_BxS, letter_BxS, -1)
  confidence_BxS = jnp.where(valid_BxS, confidence_BxS, INVALID_CONFIDENCE)
  agree_BxR = letter_BxS[:, 1:] == letter_BxS[:, :1]
  csc_B = agree_BxR.mean(axis=1)
  others_BxR = confidence_BxS[:, 1:]
  csa_B = (jnp.where(agree_BxR, others_BxR, 0.0).sum(axis=1)
           / (others_BxR.sum(axis=1) + INVALID_CONFIDENCE))
  return letter_BxS[:, 0], csc_B, csa_B, valid_BxS.all(axis=1)


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
