"""CalibPrompt soft prompts against the logit baselines they refine.

  python -m experiments.train --config=configs/demo.py --workdir=/tmp/prompt4trust_demo
  python -m experiments.evaluate --config=configs/eval_calibprompt.py --workdir=/tmp/prompt4trust_calibprompt

The demo's tiny models and fixture (configs/eval_demo.py); real models as in
configs/eval_pmcvqa.py. configs/eval_demo.py runs every method together.
"""

from configs import eval_demo


def get_config(arg: str | None = None):
  del arg
  c = eval_demo.get_config()
  c.eval.update(methods=("logit", "logit_scaled", "calibprompt"), corruptions=())
  return c
