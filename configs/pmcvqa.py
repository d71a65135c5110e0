"""The paper's settings: Qwen2.5-1.5B-Instruct writes hints for Qwen2-VL-2B-Instruct on PMC-VQA.

  python -m experiments.train --config=configs/pmcvqa.py \
      --config.policy.path=ckpts/qwen2p5_1p5b --config.downstream.path=ckpts/qwen2_vl_2b \
      --config.data.manual_dir=/data/pmc_vqa --workdir=runs/pmcvqa

(checkpoint paths: hub downloads or `experiments.convert` outputs). The original
implementation's settings (GitHub xingbpshen/vccrl-llm, TRL 0.16.1, vLLM 0.9.1, one training
GPU), reproduced:
- the original's prompt strings byte for byte (`prompts.preset("reference")`);
- each optimizer step sees 1 question x 8 hints (TRL 0.16's per_device_train_batch_size 8
  counts completions); each rollout is reused for num_iterations = 4 optimizer steps;
- 3 epochs over train_5k: 15,000 rollouts, 60,000 optimizer steps; AdamW (weight decay 0,
  max grad norm 1.0) at 1e-6 decaying linearly to 0 over every optimizer step, no warmup;
- beta 0.04 (k3), clip 0.2, advantages r - mean(group), loss over all completion tokens;
- policy sampling 0.6 / 0.95 / top_k 100 / repetition penalty 1.0, up to 512 tokens, in
  bfloat16 (the original's vLLM server) while the update computes in float32;
- the downstream (bfloat16) at temperature 0.1, top_p 0.95, 256 tokens; its top_k and
  repetition penalty, which the original's requests left unset, from the checkpoint's
  generation_config.json as vLLM filled them;
- checkpoints every 200 optimizer steps (50 rollouts), keep 3.
Data: `--config.data.manual_dir=` the folder with PMC-VQA's CSVs and images (prepared once
into `--config.data.data_dir`, default `<workdir>/tfds`; train_5k is the original's
seed-42 draw, see `prompt4trust_jax/data/pmc_vqa.py`).
"""

import ml_collections

from configs import demo


# Memory settings for the hardware at hand (`experiments.plan_memory` checks them; BENCHMARKS.md
# has the per-device peaks at 8 questions x 8 hints): `configs/pmcvqa.py:<name>`.
SETTINGS = {
    # Full fine-tuning on one 80 GB GPU: 8 micro-batches, each layer recomputed.
    "one_gpu": {"grpo.micro_batches": 8, "policy.remat": "full"},
    # Full fine-tuning on an 8-chip slice (v4-8, v5e-8): parameters, Adam moments and the
    # batch over fsdp=8, the layers scanned (one layer's weights gathered at a time, the
    # activations split over the batch); a bfloat16 reference. At 8 questions x 8 hints the
    # planner gives 8.3 GB a chip (BENCHMARKS.md, "Memory planner").
    "fsdp": {"policy.remat": "full", "policy.scan_layers": True,
             "policy.reference_dtype": "bfloat16"},
    # LoRA rank 16 on one 16 GB chip: adapters trained on a bfloat16 base, which is also
    # the reference (adapters off).
    "lora": {"policy.lora_rank": 16, "policy.lora_alpha": 32.0, "policy.param_dtype": "bfloat16",
             "policy.dtype": "bfloat16", "policy.remat": "full", "grpo.micro_batches": 8},
}


def get_config(arg: str | None = None):
  """`configs/pmcvqa.py:<args>`, comma-separated: a memory setting (`SETTINGS`) and/or
  `multihost` (joins a multi-host run, see BUILD.md)."""
  c = demo.get_config()
  args = [a for a in (arg or "").split(",") if a]
  unknown = set(args) - set(SETTINGS) - {"multihost"}
  if unknown:
    raise ValueError(f"Unknown configs/pmcvqa.py args {sorted(unknown)}; choose from "
                     f"{sorted(SETTINGS)} and 'multihost'.")
  if "multihost" in args:
    c.distributed = demo.distributed("multihost")
  c.prompts.preset = "reference"
  c.policy.update(path="", random_tokenizer="", dtype="float32",
                  sampling_dtype="bfloat16")  # Qwen2.5-1.5B-Instruct
  c.downstream.update(path="", dtype="bfloat16", mode="verbalized", temperature=0.1, top_p=0.95,
                      max_new_tokens=256, sampling_defaults="generation_config")  # Qwen2-VL-2B
  c.data.update(name="pmc_vqa/paper", split="train_5k", questions_per_step=1,
                manual_dir="")  # set to the folder with train.csv, test_clean.csv, images/
  c.data.synthetic = None  # (ConfigDict.update would merge None into the demo's dict)
  c.sampling.update(num_generations=8, max_new_tokens=512, temperature=0.6, top_p=0.95,
                    top_k=100, repetition_penalty=1.0)
  c.grpo.update(beta=0.04, epsilon_low=0.2, epsilon_high=0.2, aggregation="bnpo",
                advantage="group_mean", num_iterations=4)
  c.optimizer.update(learning_rate=1e-6, weight_decay=0.0, max_grad_norm=1.0, schedule="linear",
                     warmup_steps=0)
  # No held-out evaluation during training (the original has none; configs/eval_pmcvqa.py
  # evaluates); train.heldout_questions=N evaluates N val_1k questions before and after.
  c.data.heldout_split = "val_1k"
  c.train.update(epochs=3.0, rollouts=0, checkpoint_every=50, keep_checkpoints=3,
                 heldout_questions=0)
  for name in args:
    for key, value in SETTINGS.get(name, {}).items():
      section, field = key.split(".")
      c[section][field] = value
  return c


def for_runtime(devices) -> tuple[ml_collections.ConfigDict, str]:
  """The paper's config in the memory setting that fits `devices` (e.g. `jax.devices()`),
  and a sentence saying which and why."""
  stats = devices[0].memory_stats() or {}
  gb = stats.get("bytes_limit", 0) / 1e9
  if len(devices) >= 8 and gb >= 15:
    name, why = "fsdp", f"full fine-tuning sharded over {len(devices)} chips of {gb:.0f} GB"
  elif gb >= 70:
    name, why = "one_gpu", f"full fine-tuning on one {gb:.0f} GB device"
  else:
    name, why = "lora", (f"LoRA rank 16 ({len(devices)} device(s) of "
                         f"{gb:.0f} GB: full fine-tuning needs 8 x 16 GB or one 80 GB)")
  return get_config(name), f"setting {name!r}: {why}"
