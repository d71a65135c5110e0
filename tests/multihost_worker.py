"""One process of `multihost_test.py`: joins the run from the environment, then

  train <workdir> <models_dir>: trains `train_config()`, reports the questions it read and
    rolled out;
  evaluate <workdir> <models_dir>: evaluates `eval_config()`.

Its last stdout line is a JSON report."""

import json
import sys
import threading

import jax

from configs import demo, eval_demo
from prompt4trust_jax import evaluation, fixtures, sharding
from prompt4trust_jax.data import pipeline
from prompt4trust_jax.training import rollout, train


def train_config(models_dir: str):
  """The demo on a data x fsdp x tensor mesh of 8 devices, two rollouts, its random models
  in `models_dir` (made by the first caller). 8 questions per step: 4 per host of 4 devices,
  so one host's padded rows are the two hosts' blocks side by side (the random draws of a
  row depend on the batch's padded shape)."""
  config = demo.get_config("smoke")
  config.mesh = dict(data=2, fsdp=2, tensor=2)
  config.data.questions_per_step = 8
  config.train.rollouts = config.train.checkpoint_every = 2
  return fixtures.with_demo_inputs(config, models_dir)


def eval_config(models_dir: str):
  """Three methods (one sampling 3 answers per item) on 16 questions, batches of 8 (4 per host
  of 4 devices, as `train_config`), the policy a random one in `models_dir`."""
  config = eval_demo.get_config("smoke")
  config.mesh = dict(data=2, fsdp=2, tensor=2)
  config.policy.update(train_workdir="", max_new_tokens=8)
  config.data.num_examples = 16
  config.eval.update(methods=("no_hint", "prompt4trust", "csc"), corruptions=(), batch_size=8,
                     consistency_samples=3, bootstrap_samples=50)
  return fixtures.with_demo_inputs(config, models_dir)


def spy_on_questions() -> dict[str, list]:
  """Records the ids of the examples this process decodes (reads) and rolls out."""
  decode, call = pipeline.decode, rollout.Rollout.__call__
  # "_restore": the originals, for a caller in a longer-lived process to put back.
  seen, lock = {"read": [], "rolled_out": [], "_restore": (decode, call)}, threading.Lock()

  def reading(record):
    example = decode(record)
    with lock:  # Grain decodes on several threads
      seen["read"].append(example["id"])
    return example

  def rolling_out(self, state, examples, key):
    seen["rolled_out"].append([e["id"] for e in examples])
    return call(self, state, examples, key)

  pipeline.decode, rollout.Rollout.__call__ = reading, rolling_out
  return seen


def main(mode: str, workdir: str, models_dir: str | None = None):
  sharding.initialize_distributed()  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
  report = {"process": jax.process_index(), "processes": jax.process_count()}
  if mode == "train":
    seen = spy_on_questions()
    train.run(train_config(models_dir), workdir)
    seen.pop("_restore")
    report.update(seen)
  else:
    evaluation.run(eval_config(models_dir), workdir)
  print(json.dumps(report))


if __name__ == "__main__":
  main(*sys.argv[1:])
