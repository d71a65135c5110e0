"""Two processes on localhost (`jax.distributed` over gloo): one data preparation, one writer,
and a training run equal to one process's on the same 8 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from prompt4trust_jax import evaluation
from prompt4trust_jax.training import train
from tests import multihost_worker


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_processes(devices_per_process: int, *args: str, flags=lambda i: {}
                   ) -> list[tuple[str, str]]:
  """Runs `python -m <args> <flags(i)>` as 2 processes on localhost (process ids 0 and 1, in
  the environment unless `flags` are given); `(stdout, stderr)` per process."""
  port = _free_port()
  procs = []
  for i in range(2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
    given = {k: v.format(port=port) for k, v in flags(i).items()}
    if not given:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", *args, *(f"--{k}={v}" for k, v in given.items())], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def _reports(outs) -> list[dict]:
  """The JSON report each `multihost_worker` process printed last."""
  return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def _records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_the_gpu_hosts_recipe_prepares_once_and_logs_once(tmp_path):
  """BUILD.md's several-GPU-hosts recipe (flag form) on CPU: the demo's launcher on 2 processes;
  process 0 alone prepares the data set and the random models (the other waits for them) and
  writes metrics.jsonl."""
  workdir = str(tmp_path / "run")
  outs = _run_processes(1, "experiments.train", flags=lambda i: {
      "config": "configs/demo.py:smoke,multihost",
      "config.distributed.coordinator_address": "localhost:{port}",
      "config.distributed.num_processes": "2", "config.distributed.process_id": str(i),
      "config.train.rollouts": "1", "workdir": workdir})
  assert all("final: " in out for out, _ in outs)
  # Process 0 prepared the data set; process 1 waited and read the prepared files.
  prepared = ["prepared to" in out for out, _ in outs]  # the launcher's one line about it
  assert prepared == [True, False], [out[-1500:] for out, _ in outs]
  # Each record once, from process 0: held out (initial policy), rollout 1, held out (trained).
  assert [(r["rollout"], "heldout/ece" in r) for r in _records(workdir)] == [
      (0, True), (1, False), (1, True)]
  # The policy is made on the fly; the downstream is the committed toy one.
  assert os.listdir(os.path.join(workdir, "random_models")) == ["qwen2_tiny"]


def test_two_hosts_of_four_devices_train_as_one_host_of_eight(tmp_path):
  """2 processes x 4 CPU devices and 1 process x 8 (this one) on one data x fsdp x tensor mesh:
  the same metrics.jsonl, each process reading and rolling out only its half of every
  global batch."""
  one_host, models = str(tmp_path / "one_host"), str(tmp_path / "models")
  config = multihost_worker.train_config(models)  # the random models both runs start from
  seen = multihost_worker.spy_on_questions()
  try:
    train.run(config, one_host)
  finally:
    from prompt4trust_jax.data import pipeline
    from prompt4trust_jax.training import rollout
    pipeline.decode, rollout.Rollout.__call__ = seen.pop("_restore")
  two_hosts = str(tmp_path / "two_hosts")
  reports = _reports(_run_processes(4, "tests.multihost_worker", "train", two_hosts, models))

  # Each host rolled out its half of every global batch, in order: together, one host's.
  halves = [r["rolled_out"] for r in reports]
  assert [a + b for a, b in zip(*halves)] == seen["rolled_out"]
  assert all(len(batch) == 4 for half in halves for batch in half)
  # Decoded (rolled out, or read ahead by Grain's prefetch of a few batches): each host
  # decoded half the records one host did, and only records that host decoded too.
  read = [r["read"] for r in reports]
  assert len(read[0]) == len(read[1]) == len(seen["read"]) // 2 > 0
  assert set(read[0]) | set(read[1]) <= set(seen["read"])

  expected, got = _records(one_host), _records(two_hosts)  # process 0 alone wrote its file
  # The held-out evaluations before and after too (each host judging its half of them).
  assert [r["rollout"] for r in got] == [r["rollout"] for r in expected] == [0, 1, 2, 2]
  for want, have in zip(expected, got):
    assert want.keys() == have.keys()
    for key in want:
      np.testing.assert_allclose(have[key], want[key], rtol=1e-4, atol=1e-4, err_msg=key)


def test_two_hosts_evaluate_and_resume_as_one_host(tmp_path):
  """Each host answers its half of every batch; process 0 writes every record once; a
  two-host run resumes a one-host run's workdir and ends with its results."""
  one_host, models = str(tmp_path / "one_host"), str(tmp_path / "models")
  expected = evaluation.run(multihost_worker.eval_config(models), one_host)
  # The two-host run starts from the first batch of each run, as if the first run stopped.
  two_hosts = tmp_path / "two_hosts"
  (two_hosts / "runs").mkdir(parents=True)
  for name in os.listdir(os.path.join(one_host, "runs")):
    with open(os.path.join(one_host, "runs", name)) as f:
      lines = f.readlines()
    (two_hosts / "runs" / name).write_text("".join(lines if name == "settings.json" else lines[:8]))
  _run_processes(4, "tests.multihost_worker", "evaluate", str(two_hosts), models)

  for name in os.listdir(os.path.join(one_host, "runs")):
    if name.endswith(".jsonl"):  # every record once, in order, as one host wrote them
      with open(os.path.join(one_host, "runs", name)) as f:
        want = [json.loads(line) for line in f]
      got = [json.loads(line) for line in (two_hosts / "runs" / name).read_text().splitlines()]
      assert [r["id"] for r in got] == [r["id"] for r in want] and len(want) == 16, name
      for a, b in zip(got, want):
        assert a["letters"] == b["letters"] and a["hint"] == b["hint"], name
        np.testing.assert_allclose(a["confidences"], b["confidences"], rtol=1e-4, atol=1e-5)
  got = json.loads((two_hosts / "results.json").read_text())["methods"]
  assert got.keys() == expected.keys()
  for method, metrics in expected.items():
    for key, value in metrics.items():
      np.testing.assert_allclose(got[method][key], value, rtol=1e-4, atol=1e-4,
                                 err_msg=f"{method} {key}")
