"""The paper's settings: Qwen2.5-1.5B-Instruct writes hints for Qwen2-VL-2B-Instruct on PMC-VQA.

  python -m experiments.train --config=configs/pmcvqa.py \
      --config.policy.path=ckpts/qwen2p5_1p5b --config.downstream.path=ckpts/qwen2_vl_2b \
      --config.data.manual_dir=/data/pmc_vqa --workdir=runs/pmcvqa

(checkpoint paths: hub downloads or `experiments.convert` outputs). METHOD.md lists the
settings: 8 questions x 8 hints per step, lr 1e-6, beta 0.04 (k3), clip 0.2, mu 4,
policy sampling 0.6/0.95/100 up to 512 tokens, downstream at temperature 0.1 (256 tokens),
checkpoints every 200 steps, keep 3. Data: `--config.data.manual_dir=` the folder with
PMC-VQA's CSVs and images (prepared once into `--config.data.data_dir`, default
`<workdir>/tfds`; see `prompt4trust_jax/data/pmc_vqa.py`).
"""

import ml_collections

from configs import demo


def get_config(arg: str | None = None):
  """`configs/pmcvqa.py:multihost` joins a multi-host run (see BUILD.md)."""
  c = demo.get_config()
  if arg == "multihost":
    c.distributed = ml_collections.ConfigDict()  # TPU pod slices: everything is discovered
  c.policy.path = ""  # set to the Qwen2.5-1.5B-Instruct checkpoint
  c.downstream.path = ""  # set to the Qwen2-VL-2B-Instruct checkpoint
  c.policy.dtype = c.downstream.dtype = "bfloat16"
  c.downstream.mode = "verbalized"
  c.data.update(name="pmc_vqa/paper", split="train_5k", questions_per_step=8,
                manual_dir="")  # set to the folder with train.csv, test_clean.csv, images/
  c.sampling.update(num_generations=8, max_new_tokens=512)
  c.grpo.num_iterations = 4
  c.optimizer.learning_rate = 1e-6
  c.train.update(total_steps=600, checkpoint_every=200, keep_checkpoints=3)
  return c
