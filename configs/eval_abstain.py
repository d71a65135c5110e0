"""The "I don't know" evaluation: abstention rate overall and where the model errs, coverage
and selective risk, next to the plain no-hint answers.

  python -m experiments.train --config=configs/demo.py --workdir=/tmp/prompt4trust_demo
  python -m experiments.evaluate --config=configs/eval_abstain.py --workdir=/tmp/prompt4trust_abstain

The demo's tiny models and fixture (configs/eval_demo.py); real models as in
configs/eval_pmcvqa.py. configs/eval_demo.py runs every method together.
"""

from configs import eval_demo


def get_config(arg: str | None = None):
  del arg
  c = eval_demo.get_config()
  c.eval.update(methods=("no_hint", "abstain"), corruptions=())
  return c
