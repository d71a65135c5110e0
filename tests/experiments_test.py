"""The absl entry points run end to end as users launch them."""

import os
import subprocess
import sys

import numpy as np

from prompt4trust_jax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, stderr: bool = False):
  """Runs `python -m <args>`; its stdout (and stderr)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return (proc.stdout, proc.stderr) if stderr else proc.stdout


def test_train_then_evaluate_demo_run_and_report(tmp_path):
  trained, evaluated = tmp_path / "train", tmp_path / "eval"
  out, err = _run("experiments.train", "--config=configs/demo.py", f"--workdir={trained}",
                  "--config.train.heldout_questions=8",
                  "--config.train.rollouts=2", "--config.sampling.max_new_tokens=8",
                  stderr=True)
  lines = out.strip().splitlines()
  final = lines[-1]
  assert final.startswith("final: ") and "reward/total/mean=" in final and "downstream/ece=" in final
  # The console: a line per rollout, the held-out before/after table, no library log dumps.
  assert [line.split()[1] for line in lines if line.startswith("rollout ")] == ["1/2", "2/2"]
  assert [line.split()[0] for line in lines[-4:-1]] == ["held", "initial", "after"]
  assert "Orbax" not in out + err and "CheckpointManager" not in err and len(lines) < 12, lines
  assert not err.strip(), err[-2000:]
  assert os.path.isdir(trained / "checkpoints" / "2")
  assert os.path.exists(trained / "metrics.jsonl")
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(trained / "tensorboard"))
  out = _run("experiments.evaluate", "--config=configs/eval_demo.py", f"--workdir={evaluated}",
             f"--config.policy.train_workdir={trained}", "--config.policy.max_new_tokens=8",
             "--config.data.num_examples=4", "--config.eval.methods=('no_hint','prompt4trust')",
             "--config.eval.corruptions=()")
  assert "| prompt4trust | 4 |" in out
  for name in ("results.json", "results.md", "samples.csv", "reliability.png"):
    assert os.path.getsize(evaluated / name) > 0


def test_convert_both_ways(qwen2_dir, tmp_path):
  _run("experiments.convert", f"--hf_dir={qwen2_dir}", f"--out={tmp_path / 'orbax'}")
  _run("experiments.convert", f"--ckpt_dir={tmp_path / 'orbax'}", f"--out={tmp_path / 'hf'}")
  ids = np.arange(12).reshape(2, 6)
  ref = np.asarray(models.from_pretrained(qwen2_dir)(input_ids=ids))
  for path in ("orbax", "hf"):
    np.testing.assert_array_equal(np.asarray(models.from_pretrained(str(tmp_path / path))(input_ids=ids)), ref)


def test_bench_sampler_reports_throughput():
  out = _run("experiments.bench_sampler", "--shape=tiny", "--batch=2", "--prompt_len=8",
             "--new_tokens=4", "--repeats=1")
  last = out.strip().splitlines()[-1]
  assert last.startswith("tokens_per_s=") and float(last.split("=")[1]) > 0
  floor = dict(kv.split("=") for kv in next(
      line for line in out.splitlines() if line.startswith("decode_matmul_ms_per_step=")).split())
  assert float(floor["decode_matmul_ms_per_step"]) > 0
  assert float(floor["matmul_only_tokens_per_s"]) > 0


def test_bench_downstream_reports_throughput():
  out = _run("experiments.bench_downstream", "--shape=tiny", "--images=1", "--hints=2",
             "--max_new_tokens=4", "--repeats=1", "--image_size=56")
  lines = out.strip().splitlines()
  assert sum(line.startswith("mode=") for line in lines) == 2
  assert lines[-1].startswith("answers_per_s=") and float(lines[-1].split("=")[1]) > 0


def test_bench_grpo_reports_throughput():
  out = _run("experiments.bench_grpo", "--shape=tiny", "--prompts=2", "--group=2",
             "--completion=4", "--steps=1")
  last = out.strip().splitlines()[-1]
  assert last.startswith("completions_per_s=") and float(last.split("=")[1]) > 0
