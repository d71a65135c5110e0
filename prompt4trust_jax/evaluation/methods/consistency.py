"""`csc`, `csa`: confidence from the agreement of sampled answers (the original's csc.py).

The downstream is sampled `eval.consistency_samples` times per question at the baselines'
`eval.sample_*` settings (the original's: 0.5 / 0.95 / top_k 100, 512 tokens, the text
before the image), in one run that the entropy baseline may share. Inputs are per
question S sampled answers: `letter_BxS` (option index, -1 when the response did not
parse), `confidence_BxS` (verbalized, in [0, 1]) and `valid_BxS`.

- Sample consistency (CSC) and average confidence (CSA): the answer is the first sample;
  CSC = share of the other S-1 samples that agree with it; CSA = the agreeing samples'
  confidences summed over all S-1 confidences. Two validity rules:
  - "all" (the original's csc.py): a question is valid only if all S samples parse. An
    unparsed sample has answer -1 and confidence 1e-12 (the original's penalty), so when the
    first is unparsed the unparsed others "agree" with it: its CSC is their share and its
    CSA their tiny confidences over all (denominator + 1e-12, as there).
  - "first": valid when the first sample is; unparsed other samples disagree (confidence 0).
"""

import jax
import jax.numpy as jnp

from prompt4trust_jax.evaluation import registry

SAMPLES_RUN = "samples"  # the sampled run's name (shared with `entropy`)


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


@registry.register("consistency")
class Consistency(registry.Family):
  methods = ("csc", "csa")

  def runs(self, methods, settings):
    return [registry.Run(SAMPLES_RUN, samples=settings.get("consistency_samples", 21),
                         sampling=True)]

  def score(self, method, stored):
    e = stored.config.eval
    samples = stored.stores[SAMPLES_RUN]
    letter, csc, csa, valid = sample_consistency(
        *(jnp.asarray(samples.arrays(stored.test, k, e.consistency_samples))
          for k in ("letters", "confidences", "valid")),
        valid=e.get("consistency_valid", "all"))
    return registry.Scored(letter, csc if method == "csc" else csa, valid)
