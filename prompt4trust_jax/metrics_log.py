"""The training run's metrics: absl progress lines, `metrics.jsonl`, TensorBoard events and
the training curves (`training.png`)."""

import json
import time

from absl import logging

from prompt4trust_jax import hosts, plots, run_files


class Logger:
  """absl progress lines, a JSONL file and TensorBoard events in the workdir.

  In a multi-host run every host holds the same (globally reduced) metrics; only process 0
  writes them (`writer`), so each record and progress line appears once.
  """

  def __init__(self, workdir: str, total_rollouts: int, num_iterations: int,
               writer: bool | None = None):
    self.writer = hosts.is_writer() if writer is None else writer
    self.total, self.start, self.first = total_rollouts, time.time(), None
    self.num_iterations = num_iterations
    if not self.writer:
      return
    from tensorboardX import SummaryWriter  # a small writer without TensorFlow
    self.jsonl = run_files.path(workdir, "metrics.jsonl")  # may be remote
    self.curves = run_files.path(workdir, "training.png")
    self.tb = SummaryWriter(str(run_files.path(workdir, "tensorboard")))

  def write(self, rollout: int, metrics: dict[str, float]):
    """One record per rollout; TensorBoard's x axis is the optimizer step (TRL's)."""
    if not self.writer:
      return
    optimizer_step = rollout * self.num_iterations
    run_files.append(self.jsonl, json.dumps({"rollout": rollout,
                                             "optimizer_step": optimizer_step, **metrics}) + "\n")
    for key, value in metrics.items():
      self.tb.add_scalar(key, value, optimizer_step)
    self.first = self.first if self.first is not None else rollout - 1
    rate = (rollout - self.first) / max(time.time() - self.start, 1e-9)
    eta = (self.total - rollout) / max(rate, 1e-9)
    logging.info("rollout %d/%d (optimizer step %d/%d)  %.3f rollouts/s  ETA %.0fs  reward %.3f  "
                 "accuracy %.2f  ece %.3f  loss %.4f", rollout, self.total, optimizer_step,
                 self.total * self.num_iterations, rate, eta,
                 metrics.get("reward/total/mean", float("nan")),
                 metrics.get("downstream/accuracy", float("nan")),
                 metrics.get("downstream/ece", float("nan")), metrics.get("loss", float("nan")))

  def plot(self):
    """Redraws `training.png` from every record of metrics.jsonl (a resumed run's too)."""
    if self.writer and self.jsonl.exists():
      records = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line]
      plots.training_curves(records, self.curves)

  def close(self):
    if not self.writer:
      return
    self.tb.close()
