"""Iterative instruction search on the validation split; the best instruction (saved in
<workdir>/prompt_search.json, reusable with --config.prompt_search.instruction_file=) against
the paper's instruction.

  python -m experiments.train --config=configs/demo.py --workdir=/tmp/prompt4trust_demo
  python -m experiments.evaluate --config=configs/eval_prompt_search.py --workdir=/tmp/prompt4trust_prompt_search

The demo's tiny models and fixture (configs/eval_demo.py); real models as in
configs/eval_pmcvqa.py. configs/eval_demo.py runs every method together.
"""

from configs import eval_demo


def get_config(arg: str | None = None):
  del arg
  c = eval_demo.get_config()
  c.eval.update(methods=("no_hint", "prompt_search"), corruptions=())
  return c
