"""Robustness under input noise: every corruption of noise.CORRUPTIONS at severities 1, 3 and
5, with and without the Prompt4Trust hint and with the policy's rewrite of the noisy
question (the training-free mitigation), next to the clean inputs.

  python -m experiments.train --config=configs/demo.py --workdir=/tmp/prompt4trust_demo
  python -m experiments.evaluate --config=configs/eval_noise.py --workdir=/tmp/prompt4trust_noise

The demo's tiny models and fixture (configs/eval_demo.py); real models as in
configs/eval_pmcvqa.py. configs/eval_demo.py runs every method together.
"""

from configs import eval_demo
from prompt4trust_jax.evaluation import noise


def get_config(arg: str | None = None):
  del arg
  c = eval_demo.get_config()
  c.eval.update(methods=("no_hint", "prompt4trust"),
                corruptions=tuple(f"{name}:{level}" for name in noise.CORRUPTIONS
                                  for level in (1, 3, 5)))
  return c
