"""The Prompt4Trust loop: hints from the policy, answers from the frozen downstream,
calibration rewards, GRPO updates, Orbax checkpoints that resume exactly.

Two counts: a *rollout* is one batch of `questions_per_step` questions x G hints, answered
and rewarded; each rollout is then reused for `num_iterations` *optimizer steps* (TRL's
global steps). `train.rollouts` (or `train.epochs` over the split) sets the length; the
learning rate schedule runs over the optimizer steps; checkpoints are numbered by rollout.

Sampling keys are functions of (seed, rollout) and the questions come from a Grain
iterator whose state is saved with each checkpoint, so a checkpoint (policy parameters,
optimizer state, step, iterator state) continues bit for bit.
"""

import json
import math
import os
import time

import grain
import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from prompt4trust_jax import (data, downstream, fixtures, grpo, models, prompts, reference,
                              rewards, sharding, update)
from prompt4trust_jax import rollout as rollout_lib
from prompt4trust_jax.models import generation_config
from prompt4trust_jax.models import lora
from prompt4trust_jax.models import tokenizer as tokenizer_lib


def model_dir(section, workdir: str, seed: int, vision: bool) -> str:
  """The configured checkpoint, or a random one of `random_shape` made once in the workdir."""
  if section.path:
    return section.path
  kind = "qwen2_vl" if vision else "qwen2"
  out = os.path.join(workdir, "random_models", f"{kind}_{section.random_shape}")
  if not os.path.exists(os.path.join(out, "config.json")):
    if vision:
      fixtures.write_random_qwen2_vl(out, fixtures.vl_shape_config(section.random_shape), seed)
    else:
      fixtures.write_random_qwen2(out, fixtures.shape_config(section.random_shape), seed)
  return out


def _data_iterator(config, workdir: str):
  """`(iterator, split size)`: a Grain iterator over the configured split, lists of
  `questions_per_step` examples."""
  records = data.configured_source(config.data, config.data.split, workdir)
  # Every host reads the same questions: the rollout is computed whole on each host.
  return iter(data.batches(records, config.data.questions_per_step, config.seed)), len(records)


def num_rollouts(train_section, questions_per_step: int, split_size: int) -> int:
  """`train.rollouts`, or `train.epochs` passes over the split (TRL's num_train_epochs)."""
  epochs = train_section.get("epochs") or 0
  if train_section.rollouts and epochs:
    raise ValueError(f"Set train.rollouts ({train_section.rollouts}) or train.epochs ({epochs}), "
                     "not both.")
  if epochs:
    return max(1, math.ceil(epochs * split_size / questions_per_step))
  if train_section.rollouts < 1:
    raise ValueError("train.rollouts must be >= 1 (or set train.epochs).")
  return train_section.rollouts


def learning_rate(section, total_optimizer_steps: int):
  """The optimizer section's schedule: "constant", or "linear" to 0 over every optimizer
  step after `warmup_steps` (TRL's default: linear, no warmup)."""
  lr, warmup = section.learning_rate, section.get("warmup_steps", 0)
  schedule = section.get("schedule", "constant")
  if schedule == "constant":
    return lr
  if schedule != "linear":
    raise ValueError(f"Unknown optimizer.schedule {schedule!r}; choose 'constant' or 'linear'.")
  decay = optax.linear_schedule(lr, 0.0, max(total_optimizer_steps - warmup, 1))
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def policy_sampling(section, path: str) -> dict:
  """temperature / top_p / top_k / repetition_penalty of a policy sampling section, unset ones
  from the checkpoint's generation_config.json when `sampling_defaults` says so."""
  settings = {k: section.get(k) for k in generation_config.SAMPLING_FIELDS}
  return generation_config.resolve(settings, path, section.get("sampling_defaults", "neutral"))


def lora_config(section) -> lora.LoRAConfig | None:
  """The policy section's LoRA settings (None: full fine-tuning, `lora_rank` 0)."""
  if not section.get("lora_rank"):
    return None
  targets = section.get("lora_targets") or ",".join(lora.ALL_PROJECTIONS)
  return lora.LoRAConfig(section.lora_rank, section.get("lora_alpha", 32.0),
                         tuple(t.strip() for t in targets.split(",") if t.strip()))


def policy_model(section, workdir: str, seed: int, mesh=None):
  """`(model, tokenizer, stop ids, path)` of the policy as training holds it: parameters in
  `section.param_dtype` (float32: the master copy; `section.dtype` is the compute dtype),
  with zero-initialised LoRA adapters (float32) when `section.lora_rank` is set."""
  path = model_dir(section, workdir, seed, vision=False)
  model = models.from_pretrained(path, dtype=section.dtype,
                                 param_dtype=section.get("param_dtype") or "float32", mesh=mesh,
                                 remat=section.get("remat", "none"))
  adapters = lora_config(section)
  if adapters is not None:
    lora.apply(model, adapters, nnx.Rngs(seed))
    if mesh is not None:  # beside the sharded base, by the partition rules
      placed = nnx.state(model, nnx.LoRAParam)
      nnx.update(model, jax.device_put(placed, sharding.tree_shardings(placed, mesh)))
  tokenizer = models.load_tokenizer(path)
  return model, tokenizer, tokenizer_lib.stop_token_ids(tokenizer, path), path


def _checkpoints(workdir: str, keep: int | None = None) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def load_policy(workdir: str, policy: nnx.Module, step: int | None = None) -> int:
  """Puts the policy parameters a training run saved at `step` (default: latest) into `policy`.

  `policy` is the model the run started from (`policy_model` with the run's policy section:
  same dtypes, same LoRA adapters); its arrays keep their shardings. Returns the step restored.
  """
  manager = _checkpoints(workdir)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train first or pass the "
                            "training run's workdir.")
  target = {"params": nnx.state(policy, lora.trainable(policy))}  # LoRA: the adapters
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)))  # the params only, not the optimizer state
  nnx.update(policy, restored["state"]["params"])
  return step


def export_policy(config: ml_collections.ConfigDict, workdir: str, out_dir: str,
                  step: int | None = None, dtype: str | None = None) -> int:
  """Writes the policy a training run saved at `step` (default: latest) as a hub-layout
  safetensors directory (LoRA adapters merged), with the base checkpoint's tokenizer and
  config files. Returns the step exported."""
  policy, _, _, path = policy_model(config.policy, workdir, config.seed)
  step = load_policy(workdir, policy, step)
  models.export_hf(policy, out_dir, source_dir=path, dtype=dtype)
  return step


class Logger:
  """absl progress lines, a JSONL file and TensorBoard events in the workdir."""

  def __init__(self, workdir: str, total_rollouts: int, num_iterations: int):
    from tensorboardX import SummaryWriter  # a small writer without TensorFlow
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self.total, self.start, self.first = total_rollouts, time.time(), None
    self.num_iterations = num_iterations

  def write(self, rollout: int, metrics: dict[str, float]):
    """One record per rollout; TensorBoard's x axis is the optimizer step (TRL's)."""
    optimizer_step = rollout * self.num_iterations
    self.jsonl.write(json.dumps({"rollout": rollout, "optimizer_step": optimizer_step,
                                 **metrics}) + "\n")
    self.jsonl.flush()
    for key, value in metrics.items():
      self.tb.add_scalar(key, value, optimizer_step)
    self.first = self.first if self.first is not None else rollout - 1
    rate = (rollout - self.first) / max(time.time() - self.start, 1e-9)
    eta = (self.total - rollout) / max(rate, 1e-9)
    logging.info("rollout %d/%d (optimizer step %d/%d)  %.3f rollouts/s  ETA %.0fs  reward %.3f  "
                 "accuracy %.2f  ece %.3f  loss %.4f", rollout, self.total, optimizer_step,
                 self.total * self.num_iterations, rate, eta,
                 metrics.get("reward/total/mean", float("nan")),
                 metrics.get("downstream/accuracy", float("nan")),
                 metrics.get("downstream/ece", float("nan")), metrics.get("loss", float("nan")))

  def close(self):
    self.jsonl.close()
    self.tb.close()


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the policy; returns the last rollout's metrics."""
  os.makedirs(workdir, exist_ok=True)
  if config.get("distributed") is not None:
    sharding.initialize_distributed(**config.distributed)
  mesh = sharding.make_mesh(**config.mesh)
  preset = prompts.preset(config.prompts.preset)
  policy, tokenizer, eos, policy_path = policy_model(config.policy, workdir, config.seed, mesh)
  d = config.downstream
  downstream_path = model_dir(d, workdir, config.seed, vision=True)
  letters = data.letters(config.data.name)
  answerer = downstream.Downstream.from_pretrained(
      downstream_path, downstream.elicitation_config(d, downstream_path, preset=preset.name,
                                                     letters=letters),
      dtype=d.dtype, mesh=mesh, min_pixels=d.get("min_pixels"), max_pixels=d.get("max_pixels"))
  reward_spec = rewards.from_config(config.reward)
  g = config.grpo
  loss_config = grpo.LossConfig(epsilon_low=g.epsilon_low, epsilon_high=g.epsilon_high,
                                beta=g.beta, kl_estimator=g.kl_estimator,
                                aggregation=g.aggregation,
                                max_completion_length=config.sampling.max_new_tokens)
  frozen = None
  if g.beta:
    frozen = reference.Reference.create(policy, config.policy.get("reference_dtype"),
                                        config.policy.get("reference_host", False))
  policy_settings = policy_sampling(config.sampling, policy_path)
  batches, split_size = _data_iterator(config, workdir)
  total = num_rollouts(config.train, config.data.questions_per_step, split_size)
  o = config.optimizer
  tx = update.optimizer(learning_rate(o, total * g.num_iterations), o.weight_decay,
                        o.max_grad_norm)
  state, step_fn = update.sharded_train_step(
      update.TrainState.create(policy, tx), mesh, config=loss_config,
      temperature=policy_settings["temperature"], micro_batches=g.micro_batches,
      group_size=config.sampling.num_generations, logprob_chunk=g.get("logprob_chunk"))
  rollout = rollout_lib.Rollout(
      config, answerer, tokenizer, eos, reward_spec, frozen, preset, letters, policy_settings,
      models.graphdef_in(policy, config.policy.get("sampling_dtype")))

  manager = _checkpoints(workdir, config.train.keep_checkpoints)
  start = 0
  if manager.latest_step() is not None:
    start = manager.latest_step()
    target = {"params": state.params, "opt_state": state.opt_state, "step": state.step}
    restored = manager.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(batches)))
    state = state.replace(**restored["state"])
    logging.info("Resumed from rollout %d (optimizer step %d) in %s", start,
                 start * g.num_iterations, workdir)
  logging.info("%d rollouts of %d questions x %d hints, %d optimizer steps in all", total,
               config.data.questions_per_step, config.sampling.num_generations,
               total * g.num_iterations)

  base_key = jax.random.key(config.seed)
  logger = Logger(workdir, total, g.num_iterations)
  failures, metrics = 0, {}
  try:
    for step in range(start, total):
      key = jax.random.fold_in(base_key, step)
      batch, info = rollout(state, next(batches), key)
      if not np.isfinite(info["reward/total/mean"]):
        failures += 1
        logging.warning("Rollout %d: non-finite reward; update skipped (%d in a row).", step,
                        failures)
      else:
        for _ in range(g.num_iterations):
          state, step_metrics = step_fn(state, batch)
        step_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        failures = failures + 1 if step_metrics["skipped"] else 0
        if step_metrics["skipped"]:
          logging.warning("Rollout %d: non-finite loss or gradient; update skipped.", step)
        metrics = {**info, **step_metrics}
        logger.write(step + 1, metrics)
      if failures > config.train.max_failures:
        raise FloatingPointError(
            f"{failures} updates in a row were not finite (last at rollout {step}); check the "
            "learning rate and the reward settings. No checkpoint was written from them.")
      if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == total:
        manager.save(step + 1, args=ocp.args.Composite(
            state=ocp.args.StandardSave(
                {"params": state.params, "opt_state": state.opt_state, "step": state.step}),
            data=grain.checkpoint.CheckpointSave(batches)))
    manager.wait_until_finished()
  finally:
    logger.close()
  return metrics
