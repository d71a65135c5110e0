"""Two processes on localhost (`jax.distributed` over gloo): one data preparation, one writer."""

import json
import os
import socket
import subprocess
import sys


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_prepare_the_data_once_and_log_once(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  port = _free_port()
  procs = []
  for i in range(2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
    procs.append(subprocess.Popen([sys.executable, "-m", "tests.multihost_worker", workdir],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  assert [r["process"] for r in reports] == [0, 1] and {r["processes"] for r in reports} == {2}
  assert reports[0]["records"] == reports[1]["records"] > 0
  # Process 0 prepared the data set; process 1 waited and read the prepared files.
  prepared = ["prepared to" in err or "Generating" in err for _, err in outs]
  assert prepared[0] and not prepared[1], [err[-1500:] for _, err in outs]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert len(f.readlines()) == 1  # one record, from process 0
