"""The embedded default: Prompt4Trust end to end in the toy world (`toy_world`), on a CPU.

  python -m experiments.train --config=configs/demo.py --workdir=/tmp/prompt4trust_demo

A tiny random Qwen2 policy (its vocabulary the toy tokenizer's) writes G hints per
question of the synthetic PMC-VQA copy written into the workdir (questions of three
difficulties), the committed toy Qwen2-VL (taught to read the scans and to be
over-confident unless a hint's wording says otherwise; `experiments/teach_toy_downstream.py`)
answers each in structured mode, the paper's clinically aligned reward scores them and GRPO
updates the policy; the initial and the trained policy are evaluated on 64 held-out
questions (a before/after table). A few minutes on a 2-core CPU. Re-running the same
command resumes from the last checkpoint. Real checkpoints: `--config.policy.path=...`
and `--config.downstream.path=...`; random ones: `--config.downstream.path=""`.
"""

import ml_collections
from ml_collections import config_dict

from prompt4trust_jax import data, toy_world


def distributed(arg: str | None) -> ml_collections.ConfigDict | None:
  """The `distributed` section: None (one host), or for the `multihost` variant the arguments
  of `sharding.initialize_distributed`, unset: a TPU pod slice discovers them, GPU hosts set
  them as flags (`--config.distributed.process_id=i`, ...) or in the environment."""
  if arg in (None, ""):
    return None
  if arg != "multihost":
    raise ValueError(f"Unknown config arg {arg!r}; the only one is 'multihost'.")
  return ml_collections.ConfigDict(dict(
      coordinator_address=config_dict.placeholder(str),
      num_processes=config_dict.placeholder(int), process_id=config_dict.placeholder(int)))


ARGS = ("multihost", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`configs/demo.py:<args>`, comma-separated: `multihost` joins a multi-host run
  (BUILD.md); `smoke` checks the plumbing in about a minute (`smoke`)."""
  args = [a for a in (arg or "").split(",") if a]
  if set(args) - set(ARGS):
    raise ValueError(f"Unknown configs/demo.py args {sorted(set(args) - set(ARGS))}; choose "
                     f"from {ARGS}.")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = dict(data=1, fsdp=-1, tensor=1)  # -1: all remaining devices
  c.distributed = distributed("multihost" if "multihost" in args else None)
  # "clean": tidied wording (shorter prompts for the toy tokenizer); "reference": the original
  # implementation's strings byte for byte (configs/pmcvqa.py).
  c.prompts = dict(preset="clean")
  # dtype: the update's compute dtype; param_dtype: how parameters are held (float32: the
  # master copy AdamW updates); sampling_dtype: rollouts' ("" = the same). remat: what each
  # layer keeps for the backward ("none", "dots": matmul outputs only, "full": nothing).
  # scan_layers: the layers as one scan in training forwards and prefills (what fully
  # sharded training needs: one layer's weights gathered at a time, activations batch-split).
  # The KL's frozen reference: reference_dtype ("" = the policy's parameters as they are,
  # or e.g. "bfloat16"), in host memory between rollouts when reference_host.
  # LoRA (lora_rank > 0): adapters of rank lora_rank, scale lora_alpha / rank, on the
  # comma-separated lora_targets ("" = every projection) are trained, the base is frozen
  # (param_dtype may then be bfloat16) and is also the reference (adapters off, no copy).
  # path "": a random policy of random_shape, over random_tokenizer's tokenizer ("": the
  # fixtures' toy BPE), made in the workdir.
  c.policy = dict(path="", random_shape="tiny", random_tokenizer=toy_world.DOWNSTREAM_DIR,
                  dtype="float32", param_dtype="float32",
                  sampling_dtype="", remat="none", scan_layers=False, reference_dtype="",
                  reference_host=False, lora_rank=0, lora_alpha=32.0, lora_targets="")
  # Sampling fields left unset (placeholders) come from the checkpoint's generation_config.json
  # (sampling_defaults="generation_config", as vLLM filled them for the original), or are
  # neutral ("neutral": top_k off, no repetition penalty).
  # path "": a random Qwen2-VL of random_shape (a downstream no hint can move).
  c.downstream = dict(path=toy_world.DOWNSTREAM_DIR, random_shape="tiny", dtype="float32", mode="structured",
                      temperature=0.1, top_p=0.95, top_k=config_dict.placeholder(int),
                      repetition_penalty=config_dict.placeholder(float),
                      max_new_tokens=256, sampling_defaults="generation_config",
                      # The image processor's pixel budget; unset: the checkpoint's
                      # preprocessor_config.json, as the original used it.
                      min_pixels=config_dict.placeholder(int),
                      max_pixels=config_dict.placeholder(int))
  # The toy world's synthetic PMC-VQA copy (manual_dir "": `synthetic` written into the
  # workdir; data.FIXTURE_DIR is the committed 4-kind copy, pmc_vqa/mini), prepared once
  # into the workdir's tfds folder. heldout_split: the questions the initial and the
  # trained policy are evaluated on (train.heldout_questions of them; 0: none).
  c.data = dict(name="pmc_vqa/toy", split="train_256", manual_dir="", data_dir="", strict=False,
                questions_per_step=4, heldout_split="val_64",
                synthetic=dict(num_train=384, num_test=64, num_test_clean=64, seed=0,
                               image_size=toy_world.IMAGE_SIZE, kinds=toy_world.KINDS,
                               ordered_options=True))
  # Temperature 1 and no top-k / top-p: a random policy explores its whole vocabulary.
  c.sampling = dict(num_generations=8, max_new_tokens=24, temperature=1.0, top_p=1.0, top_k=0,
                    repetition_penalty=1.0)
  # beta: the paper's is 0.04; in the toy world it held the tiny policy at its random start
  # (held-out ECE unmoved over 400 rollouts), so the demo trains without the KL term.
  c.grpo = dict(beta=0.0, kl_estimator="k3", epsilon_low=0.2, epsilon_high=0.2,
                aggregation="bnpo", advantage="group_mean", num_iterations=2, micro_batches=1,
                # Completion tokens (rows x positions) whose logits exist at once in the
                # update and the reference forward (logprobs.from_hidden): 1024 x 151,936
                # float32 logits are 0.6 GB.
                logprob_chunk=1024)
  # schedule "linear": to 0 over all optimizer steps after warmup_steps (TRL's default).
  # A tiny policy learns at a rate the paper's 1.5B (1e-6) would not survive.
  c.optimizer = dict(learning_rate=3e-3, weight_decay=0.0, max_grad_norm=1.0, schedule="linear",
                     warmup_steps=0)
  c.reward = dict(name="clinical", params=dict(wrong_penalty=1.0))
  # A rollout: questions_per_step questions x num_generations hints, reused for num_iterations
  # optimizer steps. Length: `rollouts`, or `epochs` over the split (one of the two);
  # checkpoint_every counts rollouts.
  # heldout_questions: evaluated before the first rollout and after the last (records with
  # heldout/ece, heldout/reward, heldout/accuracy in metrics.jsonl; a before/after table).
  # 600 rollouts: 100 and 300 lowered the held-out ECE to 0.76 and 0.66 of the initial
  # (BENCHMARKS.md "The toy world").
  c.train = dict(rollouts=600, epochs=0.0, checkpoint_every=100, keep_checkpoints=3, max_failures=3,
                 heldout_questions=64)
  c = ml_collections.ConfigDict(c)
  return smoke(c) if "smoke" in args else c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The demo shrunk to check the plumbing, not the method (what most tests run): the
  committed 4-kind fixture (pmc_vqa/mini), 2 questions x 4 hints per rollout, 8 held out."""
  c.data.update(name="pmc_vqa/mini", split="train_32", heldout_split="val_8",
                manual_dir=data.FIXTURE_DIR, questions_per_step=2)
  c.sampling.num_generations = 4
  c.optimizer.learning_rate = 1e-4
  c.grpo.beta = 0.04
  c.train.update(rollouts=6, checkpoint_every=2, heldout_questions=8)
  return c
