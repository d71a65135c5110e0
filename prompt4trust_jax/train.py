"""The Prompt4Trust loop: hints from the policy, answers from the frozen downstream,
calibration rewards, GRPO updates, Orbax checkpoints that resume exactly.

Sampling keys are functions of (seed, step) and the questions come from a Grain
iterator whose state is saved with each checkpoint, so a checkpoint (policy parameters,
optimizer state, step, iterator state) continues bit for bit.
"""

import json
import os
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from prompt4trust_jax import (calibration, data, downstream, fixtures, grpo, hints, models,
                              rewards, sampling, sharding, update)
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
  """A Grain iterator over the configured split: lists of `questions_per_step` examples."""
  records = data.configured_source(config.data, config.data.split, workdir)
  # Every host reads the same questions: the rollout is computed whole on each host.
  return iter(data.batches(records, config.data.questions_per_step, config.seed))


def policy_model(section, workdir: str, seed: int, mesh=None):
  """`(model, tokenizer, stop ids, path)` of the policy as training holds it: float32
  parameters (the master copy; `section.dtype` is the compute dtype)."""
  path = model_dir(section, workdir, seed, vision=False)
  model = models.from_pretrained(path, dtype=section.dtype, param_dtype="float32", mesh=mesh)
  tokenizer = models.load_tokenizer(path)
  return model, tokenizer, tokenizer_lib.stop_token_ids(tokenizer, path), path


def _checkpoints(workdir: str, keep: int | None = None) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def load_policy(workdir: str, policy: nnx.Module, step: int | None = None) -> int:
  """Puts the policy parameters a training run saved at `step` (default: latest) into `policy`.

  `policy` is the model the run started from (same config, float32 parameters as training
  keeps them); its arrays keep their shardings. Returns the step restored.
  """
  manager = _checkpoints(workdir)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train first or pass the "
                            "training run's workdir.")
  target = {"params": nnx.state(policy)}
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)))  # the params only, not the optimizer state
  nnx.update(policy, restored["state"]["params"])
  return step


class Logger:
  """absl progress lines, a JSONL file and TensorBoard events in the workdir."""

  def __init__(self, workdir: str, total_steps: int):
    from tensorboardX import SummaryWriter  # a small writer without TensorFlow
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self.total, self.start, self.first = total_steps, time.time(), None

  def write(self, step: int, metrics: dict[str, float]):
    self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self.jsonl.flush()
    for key, value in metrics.items():
      self.tb.add_scalar(key, value, step)
    self.first = self.first if self.first is not None else step - 1
    rate = (step - self.first) / max(time.time() - self.start, 1e-9)
    eta = (self.total - step) / max(rate, 1e-9)
    logging.info("step %d/%d  %.3f steps/s  ETA %.0fs  reward %.3f  accuracy %.2f  ece %.3f  loss %.4f",
                 step, self.total, rate, eta, metrics.get("reward/total/mean", float("nan")),
                 metrics.get("downstream/accuracy", float("nan")),
                 metrics.get("downstream/ece", float("nan")), metrics.get("loss", float("nan")))

  def close(self):
    self.jsonl.close()
    self.tb.close()


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the policy; returns the last step's metrics."""
  os.makedirs(workdir, exist_ok=True)
  if config.get("distributed") is not None:
    sharding.initialize_distributed(**config.distributed)
  mesh = sharding.make_mesh(**config.mesh)
  policy, tokenizer, eos, _ = policy_model(config.policy, workdir, config.seed, mesh)
  d = config.downstream
  answerer = downstream.Downstream.from_pretrained(
      model_dir(d, workdir, config.seed, vision=True),
      downstream.ElicitationConfig(mode=d.mode, temperature=d.temperature, top_p=d.top_p,
                                   max_new_tokens=d.max_new_tokens),
      dtype=d.dtype, mesh=mesh)
  reward_spec = rewards.from_config(config.reward)
  g = config.grpo
  loss_config = grpo.LossConfig(epsilon_low=g.epsilon_low, epsilon_high=g.epsilon_high,
                                beta=g.beta, kl_estimator=g.kl_estimator,
                                aggregation=g.aggregation,
                                max_completion_length=config.sampling.max_new_tokens)
  graphdef, initial = nnx.split(policy)
  reference = jax.tree.map(jnp.copy, initial) if g.beta else None
  tx = update.optimizer(config.optimizer.learning_rate, config.optimizer.weight_decay,
                        config.optimizer.max_grad_norm)
  state, step_fn = update.sharded_train_step(
      update.TrainState.create(policy, tx), mesh, config=loss_config,
      temperature=config.sampling.temperature, micro_batches=g.micro_batches,
      group_size=config.sampling.num_generations)

  manager = _checkpoints(workdir, config.train.keep_checkpoints)
  batches = _data_iterator(config, workdir)
  start = 0
  if manager.latest_step() is not None:
    start = manager.latest_step()
    target = {"params": state.params, "opt_state": state.opt_state, "step": state.step}
    restored = manager.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(batches)))
    state = state.replace(**restored["state"])
    logging.info("Resumed from step %d in %s", start, workdir)

  base_key = jax.random.key(config.seed)
  logger = Logger(workdir, config.train.total_steps)
  failures, metrics = 0, {}
  try:
    for step in range(start, config.train.total_steps):
      key = jax.random.fold_in(base_key, step)
      batch, info = _rollout(config, state, answerer, tokenizer, eos, reward_spec, reference,
                             next(batches), key)
      if not np.isfinite(info["reward/total/mean"]):
        failures += 1
        logging.warning("Step %d: non-finite reward; update skipped (%d in a row).", step, failures)
      else:
        for _ in range(g.num_iterations):
          state, step_metrics = step_fn(state, batch)
        step_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        failures = failures + 1 if step_metrics["skipped"] else 0
        if step_metrics["skipped"]:
          logging.warning("Step %d: non-finite loss or gradient; update skipped.", step)
        metrics = {**info, **step_metrics}
        logger.write(step + 1, metrics)
      if failures > config.train.max_failures:
        raise FloatingPointError(
            f"{failures} updates in a row were not finite (last at step {step}); check the "
            "learning rate and the reward settings. No checkpoint was written from them.")
      if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == config.train.total_steps:
        manager.save(step + 1, args=ocp.args.Composite(
            state=ocp.args.StandardSave(
                {"params": state.params, "opt_state": state.opt_state, "step": state.step}),
            data=grain.checkpoint.CheckpointSave(batches)))
    manager.wait_until_finished()
  finally:
    logger.close()
  return metrics


def _rollout(config, state, answerer, tokenizer, eos, reward_spec, reference, examples, key):
  """Hints for each question (G each), the downstream's answers, rewards -> an update batch."""
  s, G = config.sampling, config.sampling.num_generations
  prompt_ids, out, texts = hints.write(
      nnx.merge(state.graphdef, state.params), tokenizer, eos, examples, num_per_prompt=G,
      max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
      rng=jax.random.fold_in(key, 0))
  items = [downstream.Item(e["question"], tuple(e["options"]), e["image"]) for e in examples]
  answers = answerer.answer(items, hints.group(texts, G), jax.random.fold_in(key, 1))
  answer_B = np.repeat([e["answer"] for e in examples], G).astype(np.int32)
  judged = rewards.Judged(letter_B=jnp.asarray(answers.letter_index),
                          confidence_B=jnp.asarray(answers.confidence),
                          valid_B=jnp.asarray(answers.valid), answer_B=jnp.asarray(answer_B))
  veto_B = None
  if reward_spec.veto:
    veto_B = jnp.asarray(reward_spec.veto_mask(texts, ["ABCD"[a] for a in answer_B]))
  total_B, per_term = reward_spec(judged, veto_B)
  info = {f"reward/{k}": float(v) for k, v in rewards.summarize(per_term, total_B, veto_B).items()}
  info.update({f"downstream/{k}": float(v) for k, v in calibration.summary(
      judged.confidence_B, judged.valid_B, judged.correct_B).items()})

  tokens, mask = sampling.left_pad(prompt_ids, sampling.bucket_length(max(map(len, prompt_ids))),
                                   len(prompt_ids), tokenizer.pad_token_id or 0)
  N = out.tokens_BxN.shape[1]
  completion_mask = (np.arange(N)[None] < out.lengths_B[:, None]).astype(np.float32)
  batch = update.Batch(
      tokens_BxL=jnp.asarray(np.concatenate([np.repeat(tokens, G, 0), out.tokens_BxN], 1)),
      attention_mask_BxL=jnp.asarray(np.concatenate([np.repeat(mask, G, 0), completion_mask], 1),
                                     jnp.int32),
      completion_mask_BxN=jnp.asarray(completion_mask), old_logp_BxN=jnp.asarray(out.logprobs_BxN),
      advantages_B=grpo.advantages(total_B, G, config.grpo.advantage))
  if reference is not None:
    batch = batch.replace(ref_logp_BxN=update.reference_logprobs(
        state.graphdef, reference, batch.tokens_BxL, batch.attention_mask_BxL, N,
        config.sampling.temperature, group_size=G))
  info["hint_length/mean"] = float(out.lengths_B.mean())
  return batch, info
