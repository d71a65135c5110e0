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

import dataclasses
import math
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from prompt4trust_jax import (calibration, checkpoints, config_sections, console, data, hosts,
                              metrics_log, models, prompts, run_files, run_models, sharding)
from prompt4trust_jax.downstream import answerer as downstream
from prompt4trust_jax.training import grpo, reference, rewards, update
from prompt4trust_jax.training import rollout as rollout_lib


def _data_iterator(config, workdir: str):
  """`(iterator, split size)`: a Grain iterator over the configured split, lists of
  `questions_per_step` examples (divided by the process count: this host's part)."""
  records = data.configured_source(config.data, config.data.split, workdir)
  # Each host reads its part of every global batch (the rollout's rows it holds).
  return iter(data.batches(records, config.data.questions_per_step, config.seed,
                           shard_index=jax.process_index(),
                           shard_count=jax.process_count())), len(records)


def _heldout_batches(config, workdir: str) -> list[list[dict]]:
  """The held-out questions (`data.heldout_split`'s first `train.heldout_questions`, in id
  order; none when 0) in lists of questions_per_step, this host's part of each."""
  n = config.train.get("heldout_questions", 0)
  if not n:
    return []
  records = data.configured_source(config.data, config.data.heldout_split, workdir)
  chosen = sorted(range(len(records)), key=lambda i: records[i]["id"])[:n]
  if len(chosen) < config.data.questions_per_step:
    raise ValueError(f"train.heldout_questions={n} ({len(chosen)} in {config.data.heldout_split})"
                     f" is fewer than one batch of data.questions_per_step="
                     f"{config.data.questions_per_step}; raise it or set it to 0.")
  return list(data.batches([records[i] for i in chosen], config.data.questions_per_step,
                           config.seed, shuffle=False, num_epochs=1,
                           shard_index=jax.process_index(), shard_count=jax.process_count()))


def heldout_metrics(rollout: rollout_lib.Rollout, state, batches, seed: int) -> dict[str, float]:
  """`heldout/ece`, `heldout/accuracy` and `heldout/reward` (the mean total reward) of the
  policy's hints on the held-out batches, over all their answers. The sampling keys depend on
  the seed only, so the initial and the trained policy are compared on equal draws."""
  key = jax.random.fold_in(jax.random.key(seed), 1 << 30)  # apart from the rollouts' keys
  judged = [rollout.judge(state, b, jax.random.fold_in(key, i)) for i, b in enumerate(batches)]
  rows = {k: np.concatenate([j[k] for j in judged]) for k in judged[0]}
  summary = calibration.summary(rows["confidence_B"], rows["valid_B"], rows["correct_B"])
  return {"heldout/ece": float(summary["ece"]), "heldout/reward": float(rows["reward_B"].mean()),
          "heldout/accuracy": float(summary["accuracy"])}


def before_after(records: list[dict]) -> str:
  """The first and last held-out records as a two-line table (with its header)."""
  heldout = [r for r in records if "heldout/ece" in r]
  if not heldout:
    return "held out: no evaluation recorded"
  lines = [f"{'held out':<22}{'ECE':>8}{'reward':>9}{'accuracy':>10}"]
  for name, r in (("initial policy", heldout[0]), (f"after rollout {heldout[-1]['rollout']}",
                                                    heldout[-1])):
    lines.append(f"{name:<22}{r['heldout/ece']:>8.3f}{r['heldout/reward']:>9.3f}"
                 f"{r['heldout/accuracy']:>10.3f}")
  return "\n".join(lines)


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


@dataclasses.dataclass
class Job:
  """What one training run is built from (`setup`); `run` loops over it."""
  mesh: jax.sharding.Mesh
  state: update.TrainState  # placed on the mesh
  step_fn: Callable  # (state, batch) -> (state, metrics): one optimizer step
  rollout: rollout_lib.Rollout  # (state, examples, key) -> (batch, info)
  batches: Iterator  # lists of questions_per_step examples (a Grain iterator)
  total: int  # rollouts in the run


def setup(config: ml_collections.ConfigDict, workdir: str,
          mesh: jax.sharding.Mesh | None = None) -> Job:
  """Models, data, optimizer and the sharded programs of a run (`mesh`: the config's)."""
  mesh = sharding.make_mesh(**config.mesh) if mesh is None else mesh
  preset = prompts.preset(config.prompts.preset)
  policy, tokenizer, eos, policy_path = run_models.policy_model(config.policy, config.seed, mesh)
  d = config.downstream
  downstream_path = run_models.model_dir(d, "downstream")
  letters = data.letters(config.data.name)
  answerer = downstream.Downstream.from_pretrained(
      downstream_path, downstream.elicitation_config(d, downstream_path, preset=preset.name,
                                                     letters=letters),
      dtype=d.dtype, mesh=mesh, min_pixels=d.get("min_pixels"), max_pixels=d.get("max_pixels"))
  reward_spec = rewards.from_config(config.reward)
  g = config.grpo
  loss_config = config_sections.to_dataclass(
      grpo.LossConfig, g, max_completion_length=config.sampling.max_new_tokens)
  frozen = None
  if g.beta:
    frozen = reference.Reference.create(policy, config.policy.get("reference_dtype"),
                                        config.policy.get("reference_host", False))
  policy_settings = run_models.policy_sampling(config.sampling, policy_path)
  if not policy_settings["temperature"] > 0:
    raise ValueError(f"sampling.temperature is {policy_settings['temperature']}; GRPO needs > 0 "
                     "(its ratio and KL read the policy's log-probs at that temperature).")
  if hosts.multiple():  # each host's rows of the update batch must split over its devices
    rows = config.data.questions_per_step // jax.process_count() * config.sampling.num_generations
    if rows % hosts.local_batch_devices(mesh):
      raise ValueError(
          f"Each of the {jax.process_count()} hosts holds {rows} completions per rollout "
          f"(questions_per_step / hosts x num_generations), which do not split over its "
          f"{hosts.local_batch_devices(mesh)} data-parallel devices; raise "
          "data.questions_per_step.")
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
      models.graphdef_in(policy, config.policy.get("sampling_dtype")), mesh)
  return Job(mesh, state, step_fn, rollout, batches, total)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the policy; returns the last rollout's metrics."""
  sharding.join_configured(config)  # before anything touches a device
  run_files.path(workdir).mkdir(parents=True, exist_ok=True)  # may be remote (gs://...)
  job = setup(config, workdir)
  state, batches, total, g = job.state, job.batches, job.total, config.grpo

  manager = checkpoints.manager(workdir, config.train.keep_checkpoints)
  start = 0
  if manager.latest_step() is not None:
    start = manager.latest_step()
    state = checkpoints.restore(manager, start, state, batches)
    console.say(f"Resumed from rollout {start} (optimizer step {start * g.num_iterations}) "
                f"in {workdir}")
  console.say(f"{total} rollouts of {config.data.questions_per_step} questions x "
              f"{config.sampling.num_generations} hints, {total * g.num_iterations} optimizer "
              "steps in all")

  base_key = jax.random.key(config.seed)
  logger = metrics_log.Logger(workdir, total, g.num_iterations)
  heldout = _heldout_batches(config, workdir)
  # The rollouts already evaluated, as process 0 read them: every host takes one decision.
  evaluated = set(hosts.all_objects(
      sorted({r["rollout"] for r in logger.records() if "heldout/ece" in r}))[0])
  failures, metrics = 0, {}
  try:
    if heldout and start == 0 and 0 not in evaluated:  # the initial policy, once
      logger.write_heldout(0, heldout_metrics(job.rollout, state, heldout, config.seed))
    for step in range(start, total):
      key = jax.random.fold_in(base_key, step)
      batch, info = job.rollout(state, next(batches), key)
      if not np.isfinite(info["reward/total/mean"]):
        failures += 1
        logging.warning("Rollout %d: non-finite reward; update skipped (%d in a row).", step,
                        failures)
      else:
        for _ in range(g.num_iterations):
          state, step_metrics = job.step_fn(state, batch)
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
        checkpoints.save(manager, step + 1, state, batches)
        logger.plot()
    manager.wait_until_finished()
    if heldout and total not in evaluated:  # the trained policy
      logger.write_heldout(total, heldout_metrics(job.rollout, state, heldout, config.seed))
      logger.plot()
    if heldout and hosts.is_writer():
      console.say(before_after(logger.records()))
  finally:
    logger.close()
  return metrics
