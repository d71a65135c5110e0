"""Evaluation on the embedded default: the demo's trained policy against the baselines in the
toy world.

  python -m experiments.train --config=configs/demo.py --workdir=/tmp/prompt4trust_demo
  python -m experiments.evaluate --config=configs/eval_demo.py --workdir=/tmp/prompt4trust_eval

Every method of `prompt4trust_jax.evaluate` on the toy world's 64 test_clean questions
(`logit_scaled` fits its temperature, `calibprompt` its soft prompt and `prompt_search` its
instruction on val_64), plus three methods under two input corruptions, answered by the
toy Qwen2-VL in structured mode; the Prompt4Trust hints come from the demo run's latest
checkpoint. `:smoke` evaluates the smoke run (`configs/demo.py:smoke`) on the committed
fixture's 16. Real models: `configs/eval_pmcvqa.py`.
"""

import ml_collections
from ml_collections import config_dict

from configs import demo, soft_prompt_demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`configs/eval_demo.py:<args>`: those of `configs/demo.py` (`multihost`, `smoke`)."""
  train = demo.get_config(arg)
  c = ml_collections.ConfigDict()
  c.seed = train.seed
  c.mesh = train.mesh
  c.distributed = train.distributed
  # The policy the demo trained (its random base is rebuilt from the seed in that workdir).
  c.prompts = dict(train.prompts)
  # Greedy hints; the sampling fields the original's requests left unset (top_k, repetition
  # penalty) from the policy's generation_config.json, as vLLM filled them.
  c.policy = dict(path="", random_shape="tiny", random_tokenizer=train.policy.random_tokenizer,
                  dtype="float32",
                  train_workdir="/tmp/prompt4trust_demo", step=0, max_new_tokens=24,
                  temperature=0.0, top_p=1.0, top_k=config_dict.placeholder(int),
                  repetition_penalty=config_dict.placeholder(float),
                  sampling_defaults="generation_config")
  c.downstream = ml_collections.ConfigDict(train.downstream)  # keeps its unset placeholders
  c.downstream.update(parser="paper", letters="")
  c.data = dict(train.data, split="test_clean", val_split=train.data.heldout_split,
                num_examples=0)
  c.eval = dict(
      methods=("no_hint", "fixed_hint", "prompt4trust", "csc", "csa", "entropy",
               "entropy_prompt4trust", "logit", "logit_scaled", "calibprompt", "abstain",
               "prompt_search"),
      # Robustness: these methods again under each "corruption:severity" (noise.CORRUPTIONS).
      corruptions=("gaussian_noise:3", "typo:3"), noise_methods=("no_hint", "prompt4trust",
                                                                   "rewrite"),
      batch_size=8,
      # CSC/CSA as the original's csc.py: 21 samples at these settings, the text before the
      # image, valid only if every sample parses ("first": if the first does).
      consistency_samples=21, sample_temperature=0.5, sample_top_p=0.95, sample_top_k=100,
      sample_repetition_penalty=1.0, sample_max_new_tokens=512, sample_image_first=False,
      consistency_valid="all",
      # Entropy: 40 samples at the downstream's own settings ("consistency": share CSC's).
      entropy_samples=40, entropy_sampling="downstream",
      num_bins=10, binning="paper", bootstrap_samples=1000)
  # CalibPrompt: soft prompt tokens learnt on the validation split's labelled examples.
  c.soft_prompt = soft_prompt_demo.get_config()
  c.soft_prompt.train_split = train.data.heldout_split
  # Instruction search: the policy rewrites the downstream instruction; scored on the
  # validation split.
  c.prompt_search = dict(rounds=2, per_round=2, top_k=2, bucket=0.05, num_examples=0,
                         max_new_tokens=24, temperature=0.8, instruction_file="")
  return ml_collections.ConfigDict(c)
