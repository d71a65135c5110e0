"""What the launchers (`experiments/train.py`, `evaluate.py`) do, for tests: the demos'
random models made first (`fixtures.with_demo_inputs`), then the loop or the harness."""

from prompt4trust_jax import evaluation, fixtures
from prompt4trust_jax.training import train as train_lib


def train(config, workdir: str):
  return train_lib.run(fixtures.with_demo_inputs(config, workdir), workdir)


def evaluate(config, workdir: str):
  return evaluation.run(fixtures.with_demo_inputs(config, workdir), workdir)
