"""Prompt4Trust on MedMCQA (text only, options "(1) ..." answered by number), train and evaluate.

  python -m experiments.train --config=configs/medmcqa.py --workdir=/tmp/prompt4trust_medmcqa
  python -m experiments.evaluate --config=configs/medmcqa.py:eval \
      --config.policy.train_workdir=/tmp/prompt4trust_medmcqa --workdir=/tmp/prompt4trust_medmcqa_eval

By default the tiny random models of configs/demo.py on the committed synthetic MedMCQA copy;
real runs: `--config.data.manual_dir=` the folder with MedMCQA's train.json and dev.json,
`--config.policy.path=` and `--config.downstream.path=` (any supported LM or VLM; no images
are sent). The downstream reads numbers: the "medmcqa" parser, letters "1234" in
structured and logit modes, and the "medmcqa" prompt preset.
"""

from configs import demo, eval_demo
from prompt4trust_jax import data

_TEXT_METHODS = ("no_hint", "fixed_hint", "prompt4trust", "csc", "csa", "entropy",
                 "entropy_prompt4trust", "logit", "logit_scaled")


def get_config(arg: str | None = None):
  """`configs/medmcqa.py` trains; `configs/medmcqa.py:eval` evaluates."""
  if arg not in (None, "", "eval"):
    raise ValueError(f"configs/medmcqa.py takes no argument or 'eval', got {arg!r}.")
  # The demo's plumbing-sized variant, on tiny random models (the toy world's are for images).
  c = eval_demo.get_config("smoke") if arg == "eval" else demo.get_config("smoke")
  c.policy.random_tokenizer = ""
  c.downstream.path = ""
  c.prompts.preset = "medmcqa"
  c.downstream.update(parser="medmcqa", letters="1234")
  c.data.update(name="medmcqa", manual_dir=data.MEDMCQA_FIXTURE_DIR)
  c.data.synthetic = None
  if arg == "eval":
    c.policy.train_workdir = "/tmp/prompt4trust_medmcqa"
    c.data.update(split="validation", val_split="train")  # T of logit_scaled fitted on train
    # Text corruptions only (no images); abstention, soft prompts and the instruction search
    # are worded for lettered image questions.
    c.eval.update(methods=_TEXT_METHODS, corruptions=("typo:3",))
  else:
    c.data.update(split="train", heldout_split="validation")
  return c
