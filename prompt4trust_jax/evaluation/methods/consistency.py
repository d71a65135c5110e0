"""`csc`, `csa`: confidence from the agreement of sampled answers (the original's csc.py).

The downstream is sampled `eval.consistency_samples` times per question at the baselines'
`eval.sample_*` settings (the original's: 0.5 / 0.95 / top_k 100, 512 tokens, the text
before the image), in one run that the entropy baseline may share. Inputs are per
question G sampled answers: `letter_BxG` (option index, -1 when the response did not
parse), `confidence_BxG` (verbalized, in [0, 1]) and `valid_BxG`.

- Sample consistency (CSC) and average confidence (CSA): the answer is the first sample;
  CSC = share of the other G-1 samples (O) that agree with it; CSA = the agreeing samples'
  confidences summed over all G-1 confidences. Two validity rules:
  - "all" (the original's csc.py): a question is valid only if all G samples parse. An
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


def sample_consistency(letter_BxG: jax.Array, confidence_BxG: jax.Array, valid_BxG: jax.Array,
                       valid: str = "all") -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`(letter_B, csc_B, csa_B, valid_B)` from G >= 2 samples per question (module docstring)."""
  if letter_BxG.shape[1] < 2:
    raise ValueError(f"Sample consistency needs >= 2 samples per question, got "
                     f"{letter_BxG.shape[1]}.")
  if valid == "all":
    return _consistency_all_valid(letter_BxG, confidence_BxG, valid_BxG.astype(bool))
  if valid != "first":
    raise ValueError(f"Unknown consistency validity rule {valid!r}; choose 'all' or 'first'.")
  first_B, valid_B = letter_BxG[:, 0], valid_BxG[:, 0]
  others_valid = valid_BxG[:, 1:]
  agree_BxO = (letter_BxG[:, 1:] == first_B[:, None]) & others_valid
  csc_B = agree_BxO.mean(axis=1)
  others_conf_BxO = jnp.where(others_valid, confidence_BxG[:, 1:], 0.0)
  total_B = others_conf_BxO.sum(axis=1)
  agreeing_B = jnp.where(agree_BxO, others_conf_BxO, 0.0).sum(axis=1)
  # No confidence among the others: nothing supports the answer.
  csa_B = jnp.where(total_B > 0, agreeing_B / jnp.where(total_B > 0, total_B, 1.0), 0.0)
  zero = jnp.zeros_like(csc_B)
  return (jnp.where(valid_B, first_B, -1), jnp.where(valid_B, csc_B, zero),
          jnp.where(valid_B, csa_B, zero), valid_B)


def _consistency_all_valid(letter_BxG, confidence_BxG, valid_BxG):
  letter_BxG = jnp.where(valid_BxG, letter_BxG, -1)
  confidence_BxG = jnp.where(valid_BxG, confidence_BxG, INVALID_CONFIDENCE)
  agree_BxO = letter_BxG[:, 1:] == letter_BxG[:, :1]
  csc_B = agree_BxO.mean(axis=1)
  others_BxO = confidence_BxG[:, 1:]
  csa_B = (jnp.where(agree_BxO, others_BxO, 0.0).sum(axis=1)
           / (others_BxO.sum(axis=1) + INVALID_CONFIDENCE))
  return letter_BxG[:, 0], csc_B, csa_B, valid_BxG.all(axis=1)


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
