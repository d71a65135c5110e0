"""Training and evaluation run end to end on the realistic checkpoints (tests/realistic.py):
Qwen's real tokenizer and chat templates, vocabulary 151,936, the hub's generation and
processor configs, with the reference preset."""

import json
import os

import numpy as np

from configs import demo, eval_demo
from prompt4trust_jax import evaluation
from tests import launch


def test_train_then_evaluate_on_realistic_checkpoints(realistic_policy_dir, realistic_vl_dir,
                                                      tmp_path):
  config = demo.get_config("smoke")
  config.prompts.preset = "reference"
  config.policy.path, config.downstream.path = realistic_policy_dir, realistic_vl_dir
  config.data.questions_per_step = 2
  config.sampling.update(num_generations=4, max_new_tokens=6)  # 8 rows: one per fake device
  config.train.update(rollouts=1, checkpoint_every=1, heldout_questions=0)
  trained = str(tmp_path / "train")
  metrics = launch.train(config, trained)
  assert np.isfinite(metrics["loss"]) and metrics["downstream/invalid_rate"] == 0
  with open(os.path.join(trained, "metrics.jsonl")) as f:
    record = json.loads(f.readline())
  assert (record["rollout"], record["optimizer_step"]) == (1, config.grpo.num_iterations)

  c = eval_demo.get_config("smoke")
  c.prompts.preset = "reference"
  c.policy.update(path=realistic_policy_dir, train_workdir=trained, max_new_tokens=6)
  c.downstream.path = realistic_vl_dir
  c.data.num_examples = 2
  # The harness's kinds of run (each prompt's tokens are checked in realistic_prompts_test).
  c.eval.update(methods=("no_hint", "fixed_hint", "prompt4trust", "csc", "entropy_prompt4trust",
                         "logit"), corruptions=(), batch_size=2, consistency_samples=3,
                entropy_samples=3, bootstrap_samples=20)
  results = launch.evaluate(c, str(tmp_path / "eval"))
  assert set(results) == set(evaluation.method_names(c))
  for m, r in results.items():
    assert 0 <= r["all/accuracy"] <= 1, m
