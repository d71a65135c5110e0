"""The Prompt4Trust loop end to end on tiny models: it trains, checkpoints and resumes exactly."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from prompt4trust_jax import checkpoints, fixtures, run_models
from tests import launch


def _config(rollouts, **overrides):
  config = demo.get_config("smoke")
  config.sampling.max_new_tokens = 12
  config.train.rollouts = rollouts
  config.train.checkpoint_every = 2
  config.train.heldout_questions = 0  # on where a test says so
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
  # A constant learning rate: the linear schedule spans the run's length, which the halted
  # run's first leg changes (the SIGKILL test below resumes the linear default).
  straight, halted = str(tmp_path / "straight"), str(tmp_path / "halted")
  constant = {"optimizer.schedule": "constant", "train.heldout_questions": 2}
  metrics = launch.train(_config(4, **constant), straight)
  assert np.isfinite(metrics["loss"]) and metrics["downstream/invalid_rate"] == 0
  launch.train(_config(2, **constant), halted)  # stops after rollout 2 (a checkpoint)
  launch.train(_config(4, **constant), halted)  # the same command again resumes at rollout 2
  a, b = _checkpoint(straight, 4), _checkpoint(halted, 4)
  assert int(a["step"]) == int(b["step"]) == 4 * demo.get_config("smoke").grpo.num_iterations
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with open(os.path.join(halted, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  iterations = demo.get_config("smoke").grpo.num_iterations
  heldout = [r for r in records if "heldout/ece" in r]
  records = [r for r in records if "heldout/ece" not in r]
  assert [r["rollout"] for r in records] == [1, 2, 3, 4]
  assert [r["optimizer_step"] for r in records] == [iterations * r for r in (1, 2, 3, 4)]
  # Held out: the initial policy once, then after each leg's last rollout (none repeated).
  assert [r["rollout"] for r in heldout] == [0, 2, 4]
  assert all(set(r) >= {"heldout/ece", "heldout/reward", "heldout/accuracy"} for r in heldout)
  # The initial policy's figures do not depend on the run: both runs start from one policy.
  with open(os.path.join(straight, "metrics.jsonl")) as f:
    assert json.loads(f.readline()) == heldout[0]
  # The training curves, redrawn at each checkpoint from every record (the resumed leg's too).
  with open(os.path.join(halted, "training.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_unknown_data_set_is_named(tmp_path):
  with pytest.raises(ValueError, match="Unknown data set 'pmc'"):
    launch.train(_config(1, **{"data.name": "pmc"}), str(tmp_path))


def test_sigkill_and_restart_matches_an_uninterrupted_run(tmp_path):
  """A run killed with SIGKILL mid-training and started again ends with the same parameters."""
  import signal
  import subprocess
  import sys
  import time
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = [sys.executable, "-m", "experiments.train", "--config=configs/demo.py:smoke",
          "--config.train.rollouts=3", "--config.train.checkpoint_every=1",
          "--config.sampling.max_new_tokens=12"]
  # The three runs share a persistent compilation cache: the restart and the straight run
  # load the programs the first run compiled (as a preempted job's restart would).
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  killed, straight = str(tmp_path / "killed"), str(tmp_path / "straight")
  start = lambda workdir: subprocess.Popen(args + [f"--workdir={workdir}"], cwd=root, env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  proc = start(killed)
  deadline = time.time() + 300
  while not os.path.isdir(os.path.join(killed, "checkpoints", "2")) and time.time() < deadline:
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # The restart and the uninterrupted run side by side (both load the cached programs).
  runs = [start(killed), start(straight)]
  assert [run.wait(timeout=600) for run in runs] == [0, 0]
  a, b = _checkpoint(killed, 3), _checkpoint(straight, 3)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_repeated_non_finite_updates_stop_the_run_without_a_checkpoint(tmp_path):
  config = _config(6, **{"optimizer.learning_rate": float("nan")})
  config.train.max_failures = 2
  with pytest.raises(FloatingPointError, match="3 updates in a row were not finite"):
    launch.train(config, str(tmp_path))
  # Step 2's checkpoint holds the untouched initial parameters; nothing after the stop.
  restored = _checkpoint(str(tmp_path), 2)
  assert int(restored["step"]) == 0
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored["params"]))


def test_rollouts_sample_in_their_own_precision(tmp_path, monkeypatch):
  """policy.sampling_dtype: hints come from a bfloat16 copy, and the ratio's "old" log-probs
  from the float32 update's own forward (as TRL recomputes them); downstream.max_pixels
  reaches the image processor."""
  import jax.numpy as jnp
  from flax import nnx
  from prompt4trust_jax.policy import hints
  from prompt4trust_jax.training import update
  from prompt4trust_jax.models import qwen2_vl_images
  dtypes, forwards = [], []
  write, reference_logprobs = hints.write, update.reference_logprobs

  def recording_write(model, *args, **kwargs):
    dtypes.append({x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))})
    return write(model, *args, **kwargs)

  monkeypatch.setattr(hints, "write", recording_write)
  monkeypatch.setattr(update, "reference_logprobs",
                      lambda *a, **k: forwards.append(1) or reference_logprobs(*a, **k))
  budgets, processor = [], qwen2_vl_images.processor_from_pretrained
  monkeypatch.setattr(qwen2_vl_images, "processor_from_pretrained",
                      lambda path, lo, hi: budgets.append((lo, hi)) or processor(path, lo, hi))
  config = _config(1, **{"policy.sampling_dtype": "bfloat16", "downstream.max_pixels": 112 * 112})
  metrics = launch.train(config, str(tmp_path))
  assert budgets == [(None, 112 * 112)]  # the image size is configuration (unset: checkpoint's)
  assert dtypes == [{jnp.dtype("bfloat16")}]
  assert len(forwards) == 2  # the old log-probs, then the reference's
  assert np.isfinite(metrics["loss"])


def test_lora_run_checkpoints_adapters_only_and_exports_them_merged(tmp_path):
  """policy.lora_rank: the run trains adapters on a bfloat16 base (no reference copy), its
  checkpoints hold adapters and their moments only, and the export folds them in."""
  from flax import nnx
  from prompt4trust_jax import models
  from prompt4trust_jax.models import lora
  workdir = str(tmp_path / "run")
  config = _config(2, **{"policy.lora_rank": 4, "policy.lora_targets": "q_proj,v_proj,up_proj",
                         "policy.param_dtype": "bfloat16", "optimizer.learning_rate": 1e-2})
  metrics = launch.train(config, workdir)
  assert np.isfinite(metrics["loss"]) and metrics["kl"] >= 0
  config = fixtures.with_demo_inputs(config, workdir)  # the base the run started from
  saved = _checkpoint(workdir, 2)["params"]
  paths = {"/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(saved)[0]}
  assert paths and all("lora_a" in p or "lora_b" in p for p in paths), sorted(paths)[:4]
  assert len(paths) == 2 * 3 * 2  # A and B on 3 projections of 2 layers
  policy, *_ = run_models.policy_model(config.policy, config.seed)
  checkpoints.load_policy(workdir, policy)
  assert max(float(abs(x).max()) for x in jax.tree.leaves(nnx.state(policy, nnx.LoRAParam))
             if x.ndim and x.shape[0] == 4) > 0  # B moved off zero
  out = str(tmp_path / "export")
  assert checkpoints.export_policy(config, workdir, out) == 2
  exported = models.from_pretrained(out, dtype="float32")
  assert not lora.has_adapters(exported)
  ids = np.array([[5, 6, 7, 8]])
  adapted = np.asarray(policy(ids))
  # The base is stored in bfloat16; the merged kernels are rounded to it once more.
  np.testing.assert_allclose(np.asarray(exported(ids)), adapted, atol=0.05 * np.abs(adapted).max())


def test_checkpoint_dir_keeps_a_remote_workdir_a_url(tmp_path, monkeypatch):
  # os.path.abspath("gs://b/run") would be "<cwd>/gs:/b/run", a local folder.
  assert str(checkpoints.checkpoint_dir("gs://bucket/run")) == "gs://bucket/run/checkpoints"
  monkeypatch.chdir(tmp_path)
  assert str(checkpoints.checkpoint_dir("run")) == str(tmp_path / "run" / "checkpoints")
