"""The paper's evaluation: PMC-VQA test_clean, Qwen2-VL-2B-Instruct, verbalized confidences.

  python -m experiments.evaluate --config=configs/eval_pmcvqa.py \
      --config.policy.path=ckpts/qwen2p5_1p5b --config.policy.train_workdir=runs/pmcvqa \
      --config.downstream.path=ckpts/qwen2_vl_2b --config.data.manual_dir=/data/pmc_vqa \
      --workdir=runs/pmcvqa_eval

The published hint writer, with no training run: `--config.policy.path=` a download of
`xingshen/prompt4trust-cgpgenerator-1.5B` and `--config.policy.train_workdir=` left empty.
Zero-shot transfer: the same policy with another downstream, e.g.
`--config.downstream.path=ckpts/qwen2_5_vl_7b`.

As the original evaluated (its prompt strings; `configs/pmcvqa.py`): the policy writes greedy
hints (temperature 0, top_p 1, up to 512 tokens) in bfloat16, its repetition penalty and
top_k from its generation_config.json (unset in the original's requests, filled by vLLM); the
downstream answers at temperature 0.1 / top_p 0.95 / 256 tokens, the rest from its
generation_config.json; CSC/CSA as its csc.py (21 samples at 0.5 / 0.95 / top_k 100, 512
tokens, the text before the image, valid only if all parse); entropy from 40 samples at the
downstream's own settings, with and without the hint. The temperature of `logit_scaled` is
fitted on val_1k. Test split: test_clean.csv (the original's `test_cleaner` file is not
public).
"""

from configs import eval_demo
from prompt4trust_jax.evaluation import noise


def get_config(arg: str | None = None):
  """`configs/eval_pmcvqa.py:multihost` joins a multi-host run (BUILD.md)."""
  c = eval_demo.get_config(arg)
  c.prompts.preset = "reference"
  c.policy.update(path="", random_tokenizer="", train_workdir="", dtype="bfloat16", max_new_tokens=512,
                  temperature=0.0, top_p=1.0, sampling_defaults="generation_config")
  c.downstream.update(path="", dtype="bfloat16", mode="verbalized", temperature=0.1, top_p=0.95,
                      max_new_tokens=256, sampling_defaults="generation_config")
  c.eval.update(consistency_samples=21, sample_temperature=0.5, sample_top_p=0.95,
                sample_top_k=100, sample_repetition_penalty=1.0, sample_max_new_tokens=512,
                sample_image_first=False, consistency_valid="all", entropy_samples=40,
                entropy_sampling="downstream")
  c.data.update(name="pmc_vqa/paper", split="test_clean", val_split="val_1k", manual_dir="")
  c.data.synthetic = None
  c.eval.batch_size = 32
  # Every corruption at severities 1, 3 and 5 (IMC-style benchmark).
  c.eval.corruptions = tuple(f"{name}:{level}" for name in noise.CORRUPTIONS for level in (1, 3, 5))
  c.soft_prompt.update(num_tokens=16, train_split="val_1k", num_train_examples=64)
  c.prompt_search.update(rounds=5, per_round=4, top_k=3, num_examples=200, max_new_tokens=256)
  return c
