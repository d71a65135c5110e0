"""The training run's metrics: one progress line per rollout, `metrics.jsonl`, TensorBoard events and
the training curves (`training.png`)."""

import json
import math
import time

from prompt4trust_jax import console, hosts, plots, run_files


class Logger:
  """Progress lines (`console.say`), a JSONL file and TensorBoard events in the workdir.

  In a multi-host run every host holds the same (globally reduced) metrics; only process 0
  writes them (`writer`), so each record and progress line appears once.
  """

  def __init__(self, workdir: str, total_rollouts: int, num_iterations: int,
               writer: bool | None = None):
    self.writer = hosts.is_writer() if writer is None else writer
    self.total, self.start, self.first = total_rollouts, time.time(), None
    self.num_iterations = num_iterations
    self.jsonl = run_files.path(workdir, "metrics.jsonl")  # may be remote; every host reads it
    self.curves = run_files.path(workdir, "training.png")
    if not self.writer:
      return
    from tensorboardX import SummaryWriter  # a small writer without TensorFlow
    self.tb = SummaryWriter(str(run_files.path(workdir, "tensorboard")))

  def _record(self, rollout: int, metrics: dict[str, float]) -> int:
    optimizer_step = rollout * self.num_iterations
    run_files.append(self.jsonl, json.dumps({"rollout": rollout,
                                             "optimizer_step": optimizer_step, **metrics}) + "\n")
    for key, value in metrics.items():
      if math.isfinite(value):  # an undefined metric (AUROC of one class) stays in the JSONL
        self.tb.add_scalar(key, value, optimizer_step)
    return optimizer_step

  def records(self) -> list[dict]:
    """Every record of metrics.jsonl so far (a resumed run's earlier ones too)."""
    if not self.jsonl.exists():
      return []
    return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line]

  def write_heldout(self, rollout: int, metrics: dict[str, float]):
    """A held-out evaluation after `rollout` rollouts (`heldout/...` keys): a record and a line."""
    if self.writer:
      self._record(rollout, metrics)
      console.say(f"held out after rollout {rollout}: " + "  ".join(
          f"{k.split('/', 1)[1]} {v:.3f}" for k, v in metrics.items()))
    if self.first is None:  # the rate counts rollouts, not the evaluation before them
      self.start = time.time()

  def write(self, rollout: int, metrics: dict[str, float]):
    """One record per rollout; TensorBoard's x axis is the optimizer step (TRL's)."""
    if not self.writer:
      return
    optimizer_step = self._record(rollout, metrics)
    self.first = self.first if self.first is not None else rollout - 1
    rate = (rollout - self.first) / max(time.time() - self.start, 1e-9)
    eta = (self.total - rollout) / max(rate, 1e-9)
    get = lambda key: metrics.get(key, float("nan"))
    console.say(f"rollout {rollout}/{self.total} (optimizer step {optimizer_step}/"
                f"{self.total * self.num_iterations})  {rate:.3f} rollouts/s  ETA {eta:.0f}s  "
                f"reward {get('reward/total/mean'):.3f}  accuracy {get('downstream/accuracy'):.2f}"
                f"  ece {get('downstream/ece'):.3f}  loss {get('loss'):.4f}")

  def plot(self):
    """Redraws `training.png` from every record of metrics.jsonl (a resumed run's too)."""
    if self.writer and self.jsonl.exists():
      plots.training_curves(self.records(), self.curves)

  def close(self):
    if not self.writer:
      return
    self.tb.close()
