"""`logit`, `logit_scaled`: the option letters' probabilities at the answer position.

`logit` reads the most probable letter and its probability (the downstream in "logit"
mode, greedy); `logit_scaled` the same after one temperature fitted by NLL on the
validation split `data.val_split` (temperature scaling), reported with the temperature.
"""

import jax.numpy as jnp
import numpy as np
from absl import logging

from prompt4trust_jax import calibration
from prompt4trust_jax.evaluation import registry


@registry.register("logit")
class Logit(registry.Family):
  methods = ("logit", "logit_scaled")

  def runs(self, methods, settings):
    runs = [registry.Run("logit", mode="logit")]
    if "logit_scaled" in methods:
      runs.append(registry.Run("logit_val", mode="logit", split="val"))
    return runs

  def score(self, method, stored):
    test, logit = stored.test, stored.stores["logit"]
    extra = {}
    if method == "logit":
      probs_BxC = logit.arrays(test, "option_probs")[:, 0]
    else:
      val = stored.splits["val"]
      temperature = float(calibration.fit_temperature(
          jnp.asarray(stored.stores["logit_val"].option_logits(val)),
          jnp.asarray([x["answer"] for x in val])))
      logging.info("logit_scaled: temperature %.4f fitted on %s", temperature,
                   stored.config.data.val_split)
      extra = {"temperature": temperature}
      probs_BxC = np.asarray(calibration.apply_temperature(
          jnp.asarray(logit.option_logits(test)), temperature))
    return registry.Scored(probs_BxC.argmax(-1), probs_BxC.max(-1), np.ones(len(test), bool),
                           extra)
