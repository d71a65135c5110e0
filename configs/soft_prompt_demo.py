"""Calibration-aware soft-prompt learning (CalibPrompt) on the demo's tiny downstream.

A config section, not a whole experiment: the evaluation harness embeds it as
`c.soft_prompt = soft_prompt_demo.get_config()` and trains the prompt on the first
`num_train_examples` (by id) of `train_split` before scoring the test split, e.g.

  python -m experiments.evaluate --config=configs/eval_demo.py \
      --config.soft_prompt.steps=50 --workdir=/tmp/prompt4trust_eval

The training fields are `soft_prompt.SoftPromptConfig`'s; the prompt is saved under
`<workdir>/soft_prompt` and a later run reuses it instead of training again.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return ml_collections.ConfigDict(dict(
      num_tokens=4,  # prompt embeddings in front of the downstream's input
      steps=20,
      learning_rate=1e-2,  # AdamW on the prompt only
      batch_size=8,
      label_smoothing=0.1,  # alpha, for the CE targets and the SMAC frequencies
      smac_weight=1.0,
      angular_weight=0.1,  # w, on the mean pairwise cosine of the class features
      train_split="val_8",
      num_train_examples=8,
  ))
