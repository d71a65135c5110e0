"""The paper's evaluation: PMC-VQA test_clean, Qwen2-VL-2B-Instruct, verbalized confidences.

  python -m experiments.evaluate --config=configs/eval_pmcvqa.py \
      --config.policy.path=ckpts/qwen2p5_1p5b --config.policy.train_workdir=runs/pmcvqa \
      --config.downstream.path=ckpts/qwen2_vl_2b --config.data.manual_dir=/data/pmc_vqa \
      --workdir=runs/pmcvqa_eval

Zero-shot transfer: the same policy with another downstream, e.g.
`--config.downstream.path=ckpts/qwen2_5_vl_7b`. The policy writes greedy hints (up to 512
tokens); the downstream answers at temperature 0.1 with a fixed seed (METHOD.md). The
temperature of `logit_scaled` is fitted on val_1k.
"""

from configs import eval_demo
from prompt4trust_jax import noise


def get_config(arg: str | None = None):
  del arg
  c = eval_demo.get_config()
  c.policy.update(path="", train_workdir="", dtype="bfloat16", max_new_tokens=512)
  c.downstream.update(path="", dtype="bfloat16", mode="verbalized", max_new_tokens=256)
  c.data.update(name="pmc_vqa/paper", split="test_clean", val_split="val_1k", manual_dir="")
  c.eval.batch_size = 32
  # Every corruption at severities 1, 3 and 5 (IMC-style benchmark).
  c.eval.corruptions = tuple(f"{name}:{level}" for name in noise.CORRUPTIONS for level in (1, 3, 5))
  c.soft_prompt.update(num_tokens=16, train_split="val_1k", num_train_examples=64)
  c.prompt_search.update(rounds=5, per_round=4, top_k=3, num_examples=200, max_new_tokens=256)
  return c
