"""`entropy`, `entropy_prompt4trust`: 1 - the normalised entropy of sampled answers.

`eval.entropy_samples` samples of the no-hint / Prompt4Trust prompt, at the downstream's own
settings (`eval.entropy_sampling="downstream"`, the original's), or sharing the consistency
baselines' samples ("consistency": one set of samples serves both; no-hint only). The
answer is the most frequent valid letter (ties: the lowest index) and the confidence
1 - H(letter frequencies) / log(C) over the valid samples (C options); no valid sample is
an invalid response.
"""

import jax
import jax.numpy as jnp

from prompt4trust_jax.evaluation import registry
from prompt4trust_jax.evaluation.methods import consistency


def entropy_confidence(letter_BxG: jax.Array, valid_BxG: jax.Array, num_options: int = 4
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(letter_B, confidence_B, valid_B)`: the modal letter and 1 - normalised entropy."""
  counts_BxC = (jax.nn.one_hot(letter_BxG, num_options) * valid_BxG[..., None]).sum(axis=1)
  n_B = counts_BxC.sum(axis=1)
  valid_B = n_B > 0
  p_BxC = counts_BxC / jnp.maximum(n_B, 1.0)[:, None]
  entropy_B = -jnp.sum(jnp.where(p_BxC > 0, p_BxC * jnp.log(jnp.where(p_BxC > 0, p_BxC, 1.0)),
                                 0.0), axis=1)
  confidence_B = jnp.where(valid_B, 1.0 - entropy_B / jnp.log(num_options), 0.0)
  letter_B = jnp.where(valid_B, jnp.argmax(counts_BxC, axis=1), -1)
  return letter_B, confidence_B, valid_B


@registry.register("entropy")
class Entropy(registry.Family):
  methods = ("entropy", "entropy_prompt4trust")

  def runs(self, methods, settings):
    how, n = settings.get("entropy_sampling", "downstream"), settings.get("entropy_samples", 40)
    if how not in ("downstream", "consistency"):
      raise ValueError(f"Unknown eval.entropy_sampling {how!r}; choose 'downstream' or "
                       "'consistency'.")
    if how == "consistency":
      if "entropy_prompt4trust" in methods:
        raise ValueError("entropy_prompt4trust samples the downstream's own settings; set "
                         "eval.entropy_sampling='downstream'.")
      return [registry.Run(consistency.SAMPLES_RUN, samples=n, sampling=True)]
    return [registry.Run(m, hint="policy" if m == "entropy_prompt4trust" else "none", samples=n)
            for m in methods]

  def score(self, method, stored):
    samples = stored.stores[method if method in stored.stores else consistency.SAMPLES_RUN]
    n = stored.config.eval.entropy_samples
    return registry.Scored(*entropy_confidence(
        jnp.asarray(samples.arrays(stored.test, "letters", n)),
        jnp.asarray(samples.arrays(stored.test, "valid", n)), len(stored.test[0]["options"])))
