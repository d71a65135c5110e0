"""The embedded default: Prompt4Trust end to end on tiny random models, made on the fly.

  python -m experiments.train --config=configs/demo.py --workdir=/tmp/prompt4trust_demo

A tiny Qwen2 policy writes G hints per question, a tiny Qwen2-VL answers each in
structured mode (always a valid letter and confidence), the clinically aligned reward
scores them and GRPO updates the policy; a few minutes on a 2-core CPU. Re-running
the same command resumes from the last checkpoint. Real checkpoints:
`--config.policy.path=...` and `--config.downstream.path=...`.
"""

import ml_collections

from prompt4trust_jax import data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = dict(data=1, fsdp=-1, tensor=1)  # -1: all remaining devices
  # Multi-host: e.g. dict() on a TPU pod slice (all discovered), or
  # dict(coordinator_address="host0:1234", num_processes=2, process_id=0) on GPU hosts.
  c.distributed = None
  c.policy = dict(path="", random_shape="tiny", dtype="float32")
  c.downstream = dict(path="", random_shape="tiny", dtype="float32", mode="structured",
                      temperature=0.1, top_p=0.95, max_new_tokens=256)
  # The committed synthetic PMC-VQA copy, prepared once into the workdir's tfds folder.
  c.data = dict(name="pmc_vqa/mini", split="train_32", manual_dir=data.FIXTURE_DIR, data_dir="",
                strict=False, questions_per_step=2)
  c.sampling = dict(num_generations=4, max_new_tokens=24, temperature=0.6, top_p=0.95, top_k=100)
  c.grpo = dict(beta=0.04, kl_estimator="k3", epsilon_low=0.2, epsilon_high=0.2,
                aggregation="bnpo", advantage="group_mean", num_iterations=2, micro_batches=1)
  c.optimizer = dict(learning_rate=1e-4, weight_decay=0.0, max_grad_norm=1.0)
  c.reward = dict(name="clinical", params=dict(wrong_penalty=1.0))
  c.train = dict(total_steps=6, checkpoint_every=2, keep_checkpoints=3, max_failures=3)
  return ml_collections.ConfigDict(c)
