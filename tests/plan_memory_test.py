"""The memory planner: one line per program, and its figures match a real allocation."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh process with the planner's XLA settings on one CPU device: plans the
# update at tiny shapes, then runs that very program once on zeros and reads the process's
# peak resident memory around it (Linux: /proc/self/clear_refs resets VmHWM).
_SCRIPT = r"""
import json, os, sys
import jax, jax.numpy as jnp
from configs import demo
from experiments import plan_memory
from prompt4trust_jax import fixtures

policy, vl = sys.argv[1], sys.argv[2]
fixtures.write_random_qwen2(policy, fixtures.shape_config("tiny"))
fixtures.write_random_qwen2_vl(vl, fixtures.vl_shape_config("tiny"))
config = demo.get_config("smoke")
config.policy.path, config.downstream.path = policy, vl
config.data.questions_per_step, config.sampling.num_generations = 4, 4
config.sampling.max_new_tokens = 256
programs = plan_memory.plan(config, image_tokens=16, prompt_tokens=128)
update = programs[-1]
state, batch = jax.tree.map(lambda x: jax.device_put(jnp.zeros(x.shape, x.dtype), x.sharding),
                            update.arguments)
args = plan_memory.per_device_bytes((state, batch))
status = lambda key: next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                          if l.startswith(key))
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
jax.block_until_ready(update.compiled(state, batch))
print(json.dumps({"lines": [p.line() for p in programs], "planned": update.peak_bytes - args,
                  "measured": status("VmHWM:") - before}))
"""


def test_planner_lines_and_peak_match_a_real_allocation(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  out = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "p"), str(tmp_path / "v")],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  names = [line.split()[0] for line in result["lines"]]
  assert names == ["program=policy_rollout", "program=vision_encoder", "program=downstream_answer",
                   "program=reference_logprobs", "program=update"]
  for line in result["lines"]:
    fields = dict(kv.split("=") for kv in line.split())
    assert float(fields["per_device_peak_GB"]) > 0 and float(fields["per_device_tflop"]) > 0
  # What the update allocates beyond its arguments (temporaries and outputs): XLA's plan
  # against the memory the process actually touched, within 25%.
  ratio = result["measured"] / result["planned"]
  assert 0.8 < ratio < 1.25, result
  print(result)


def test_half_precision_is_planned_at_half_width_as_on_accelerators():
  # XLA:CPU widens bfloat16 matmuls to float32, so a plan of a half-precision MLP would hold
  # float32 intermediates no GPU or TPU holds. The planner compiles bfloat16 as float16 with
  # that widening off: the [M, F] intermediate is half width again.
  import jax
  import jax.numpy as jnp
  from configs import pmcvqa
  from experiments import plan_memory
  M, D, F = 512, 64, 2048
  mlp = jax.jit(lambda x, w, w2: jnp.dot(jax.nn.silu(jnp.dot(x, w)), w2))
  shapes = lambda dtype: [jax.ShapeDtypeStruct(s, dtype) for s in ((M, D), (D, F), (F, D))]
  temp = lambda compiled: compiled.memory_analysis().temp_size_in_bytes
  assert temp(mlp.lower(*shapes(jnp.bfloat16)).compile()) >= M * F * 4
  assert temp(plan_memory._compile(mlp.lower(*shapes(jnp.float16)))) <= M * F * 2

  config = pmcvqa.get_config("lora")
  planned = plan_memory._half_precision_as_on_accelerators(config)
  assert (planned.policy.dtype, planned.policy.param_dtype, planned.downstream.dtype) == (
      "float16", "float16", "float16")
  assert planned.policy.sampling_dtype == "float16" and config.policy.dtype == "bfloat16"
  full = plan_memory._half_precision_as_on_accelerators(pmcvqa.get_config())
  assert full.policy.dtype == "float32"  # full precision stays as it is


def test_rollout_work_per_device_falls_as_one_over_the_devices(tmp_path):
  """On data=8 each device samples, encodes and answers 1/8 of the rows (+15% at most)."""
  import jax

  from configs import demo
  from experiments import plan_memory
  from prompt4trust_jax import fixtures
  config = demo.get_config("smoke")
  config.policy.path = fixtures.write_random_qwen2(str(tmp_path / "p"),
                                                   fixtures.shape_config("tiny"))
  config.downstream.path = fixtures.write_random_qwen2_vl(str(tmp_path / "v"),
                                                          fixtures.vl_shape_config("tiny"))
  config.data.questions_per_step, config.sampling.num_generations = 8, 2
  config.sampling.max_new_tokens = config.downstream.max_new_tokens = 16
  programs = ("policy_rollout", "vision_encoder", "downstream_answer")
  plan = lambda devices: {p.name: p.flops for p in plan_memory.plan(
      config, image_tokens=16, prompt_tokens=32, programs=programs, devices=devices)}
  config.mesh = dict(data=1, fsdp=1, tensor=1)
  one = plan(jax.devices()[:1])
  config.mesh = dict(data=8, fsdp=1, tensor=1)
  eight = plan(jax.devices())
  for name in programs:
    assert eight[name] <= one[name] / 8 * 1.15, (name, one[name], eight[name])
