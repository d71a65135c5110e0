"""The Prompt4Trust loop end to end on tiny models: it trains, checkpoints and resumes exactly."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from prompt4trust_jax import train


def _config(total_steps, **overrides):
  config = demo.get_config()
  config.sampling.max_new_tokens = 12
  config.train.total_steps = total_steps
  config.train.checkpoint_every = 2
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def _checkpoint(workdir, step):
  """The policy/optimizer state and the data iterator's position saved at `step`."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  assert manager.latest_step() == step
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  with open(os.path.join(workdir, "checkpoints", str(step), "data", "process_0-of-1.json")) as f:
    return {**restored["state"], "data": f.read()}


def test_resume_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path):
  straight, halted = str(tmp_path / "straight"), str(tmp_path / "halted")
  metrics = train.run(_config(4), straight)
  assert np.isfinite(metrics["loss"]) and metrics["downstream/invalid_rate"] == 0
  train.run(_config(2), halted)  # stops after step 2 (a checkpoint)
  train.run(_config(4), halted)  # the same command again resumes at step 2
  a, b = _checkpoint(straight, 4), _checkpoint(halted, 4)
  assert int(a["step"]) == int(b["step"]) == 4 * demo.get_config().grpo.num_iterations
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with open(os.path.join(halted, "metrics.jsonl")) as f:
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in f] == [1, 2, 3, 4]


def test_unknown_data_set_is_named(tmp_path):
  with pytest.raises(ValueError, match="Unknown data set 'pmc'"):
    train.run(_config(1, **{"data.name": "pmc"}), str(tmp_path))


def test_sigkill_and_restart_matches_an_uninterrupted_run(tmp_path):
  """A run killed with SIGKILL mid-training and started again ends with the same parameters."""
  import signal
  import subprocess
  import sys
  import time
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = [sys.executable, "-m", "experiments.train", "--config=configs/demo.py",
          "--config.train.total_steps=4", "--config.train.checkpoint_every=1",
          "--config.sampling.max_new_tokens=12"]
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(args + [f"--workdir={killed}"], cwd=root, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not os.path.isdir(os.path.join(killed, "checkpoints", "2")) and time.time() < deadline:
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  for workdir in (killed, str(tmp_path / "straight")):
    subprocess.run(args + [f"--workdir={workdir}"], cwd=root, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
  a, b = _checkpoint(killed, 4), _checkpoint(str(tmp_path / "straight"), 4)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_repeated_non_finite_updates_stop_the_run_without_a_checkpoint(tmp_path):
  config = _config(6, **{"optimizer.learning_rate": float("nan")})
  config.train.max_failures = 2
  with pytest.raises(FloatingPointError, match="3 updates in a row were not finite"):
    train.run(config, str(tmp_path))
  # Step 2's checkpoint holds the untouched initial parameters; nothing after the stop.
  restored = _checkpoint(str(tmp_path), 2)
  assert int(restored["step"]) == 0
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored["params"]))
