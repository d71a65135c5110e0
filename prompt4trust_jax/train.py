"""The Prompt4Trust loop: hints from the policy, answers from the frozen downstream,
calibration rewards, GRPO updates, Orbax checkpoints that resume exactly.

Every source of randomness is a function of (seed, step): the questions of a step,
the policy's and the downstream's sampling keys. A checkpoint therefore needs only
the policy parameters, the optimizer state and the step to continue bit for bit.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from prompt4trust_jax import (calibration, downstream, fixtures, grpo, models, prompts, rewards,
                              sampling, sharding, update)
from prompt4trust_jax.models import tokenizer as tokenizer_lib


def _model_dir(section, workdir: str, seed: int, vision: bool) -> str:
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


def _examples(config):
  if config.data.name != "synthetic":
    raise ValueError(f"Unknown data set {config.data.name!r}; the data builders are not in yet, "
                     "use 'synthetic'.")
  return fixtures.synthetic_questions(config.data.num_examples, config.seed)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def _step_examples(examples, step: int, per_step: int, seed: int):
  """The questions of `step`: epochs walk permutations fixed by (seed, epoch)."""
  picked = []
  for position in range(step * per_step, (step + 1) * per_step):
    epoch, offset = divmod(position, len(examples))
    picked.append(examples[_epoch_order(seed, epoch, len(examples))[offset]])
  return picked


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
  policy_dir = _model_dir(config.policy, workdir, config.seed, vision=False)
  policy = models.from_pretrained(policy_dir, dtype=config.policy.dtype, param_dtype="float32",
                                  mesh=mesh)
  tokenizer = models.load_tokenizer(policy_dir)
  eos = tokenizer_lib.stop_token_ids(tokenizer, policy_dir)
  d = config.downstream
  answerer = downstream.Downstream.from_pretrained(
      _model_dir(d, workdir, config.seed, vision=True),
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
      temperature=config.sampling.temperature, micro_batches=g.micro_batches)

  manager = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints, create=True))
  start = 0
  if manager.latest_step() is not None:
    start = manager.latest_step()
    target = {"params": state.params, "opt_state": state.opt_state, "step": state.step}
    restored = manager.restore(start, args=ocp.args.StandardRestore(target))
    state = state.replace(**restored)
    logging.info("Resumed from step %d in %s", start, workdir)

  examples = _examples(config)
  base_key = jax.random.key(config.seed)
  logger = Logger(workdir, config.train.total_steps)
  failures, metrics = 0, {}
  try:
    for step in range(start, config.train.total_steps):
      key = jax.random.fold_in(base_key, step)
      batch, info = _rollout(config, state, answerer, tokenizer, eos, reward_spec, reference,
                             _step_examples(examples, step, config.data.questions_per_step,
                                            config.seed), key)
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
        manager.save(step + 1, args=ocp.args.StandardSave(
            {"params": state.params, "opt_state": state.opt_state, "step": state.step}))
    manager.wait_until_finished()
  finally:
    logger.close()
  return metrics


def _rollout(config, state, answerer, tokenizer, eos, reward_spec, reference, examples, key):
  """Hints for each question (G each), the downstream's answers, rewards -> an update batch."""
  s, G = config.sampling, config.sampling.num_generations
  prompt_ids = [tokenizer_lib.chat_prompt_ids(tokenizer, prompts.policy_prompt(e["question"],
                                                                              e["options"]))
                for e in examples]
  policy = nnx.merge(state.graphdef, state.params)
  out = sampling.generate(policy, [p for p in prompt_ids for _ in range(G)],
                          max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                          top_p=s.top_p, top_k=s.top_k, eos_token_ids=eos,
                          pad_token_id=tokenizer.pad_token_id or 0, rng=jax.random.fold_in(key, 0))
  hints = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in out.tokens]
  items = [downstream.Item(e["question"], tuple(e["options"]), e["image"]) for e in examples]
  answers = answerer.answer(items, [hints[i * G:(i + 1) * G] for i in range(len(examples))],
                            jax.random.fold_in(key, 1))
  answer_B = np.repeat([e["answer"] for e in examples], G).astype(np.int32)
  judged = rewards.Judged(letter_B=jnp.asarray(answers.letter_index),
                          confidence_B=jnp.asarray(answers.confidence),
                          valid_B=jnp.asarray(answers.valid), answer_B=jnp.asarray(answer_B))
  veto_B = None
  if reward_spec.veto:
    veto_B = jnp.asarray(reward_spec.veto_mask(hints, ["ABCD"[a] for a in answer_B]))
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
        config.sampling.temperature))
  info["hint_length/mean"] = float(out.lengths_B.mean())
  return batch, info
