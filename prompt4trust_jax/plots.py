"""Figures people read instead of tables, written as PNGs: reliability diagrams as small
multiples (the evaluation's `reliability.png`) and training curves (the run's `training.png`).
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath
# The Agg canvas on a bare Figure, not pyplot: no display needed, and no global backend
# switched under a caller's notebook.
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prompt4trust_jax import calibration

# Training curves, one panel each: (metrics.jsonl key, title, the held-out evaluation's key[,
# what the panel says when a run does not log the key; default "not logged"]).
TRAINING_CURVES = (("reward/total/mean", "reward", "heldout/reward"),
                   ("downstream/accuracy", "accuracy", "heldout/accuracy"),
                   ("downstream/ece", "ECE", "heldout/ece"),
                   ("kl", "KL to the reference", None, "not computed:\ngrpo.beta = 0"),
                   ("hint_length/mean", "hint length (tokens)", None))
# Beyond this many points a curve is drawn faintly under its trailing mean.
SMOOTH_ABOVE = 50


def colors(n: int) -> list:
  """n colours, none repeated: tab10 up to 10, else evenly spaced along turbo."""
  if n <= 10:
    return [colormaps["tab10"](i) for i in range(n)]
  return [colormaps["turbo"](0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def _figure(width: float, height: float) -> Figure:
  figure = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(figure)
  return figure


def _save(figure: Figure, path) -> None:
  with epath.Path(path).open("wb") as f:  # may be remote
    figure.savefig(f, dpi=110, format="png")


def _bin_edges(confidence_B, index_B, num_bins: int, binning: str):
  """Each bin's [left, right): fixed tenths (or 1/num_bins), or for equal-mass bins the span
  of the confidences in it."""
  if binning != "mass":
    edges = np.linspace(0, 1, num_bins + 1)
    return edges[:-1], edges[1:]
  left, right = np.zeros(num_bins), np.zeros(num_bins)
  for z in range(num_bins):
    inside = confidence_B[index_B == z]
    if inside.size:
      left[z], right[z] = inside.min(), max(inside.max(), inside.min() + 0.02)
  return left, right


def reliability_diagram(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path,
                        num_bins: int = 10, binning: str = "paper", columns: int = 4) -> str:
  """One panel per method: accuracy per confidence bin as bars against the diagonal, the gap
  to each bin's mean confidence shaded, the bin counts under it, ECE and n in its title.

  `curves` maps a method's name to (confidence_B, correct_B); a method with no samples gets an
  empty panel (ECE nan). Returns `path`.
  """
  names = list(curves)
  columns = max(1, min(columns, len(names)))
  rows = math.ceil(len(names) / columns)
  figure = _figure(3.1 * columns, 3.6 * rows)
  grid = figure.add_gridspec(rows, columns)
  for i, (name, color) in enumerate(zip(names, colors(len(names)))):
    r, c = divmod(i, columns)
    panel = grid[r, c].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
    top = figure.add_subplot(panel[0])
    bottom = figure.add_subplot(panel[1], sharex=top)
    confidence_B = np.asarray(curves[name][0], np.float32)
    correct_B = np.asarray(curves[name][1], np.float32)
    top.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    error = np.nan
    if confidence_B.size:
      count_Z, accuracy_Z, mean_Z = map(np.asarray, calibration.reliability_bins(
          confidence_B, correct_B, num_bins, binning))
      error = float(calibration.ece(confidence_B, correct_B, num_bins, binning))
      index_B = np.asarray(calibration.bin_index(confidence_B, num_bins, binning))
      left_Z, right_Z = _bin_edges(confidence_B, index_B, num_bins, binning)
      kept = count_Z > 0
      width_Z = (right_Z - left_Z)[kept]
      top.bar(left_Z[kept], accuracy_Z[kept], width_Z, align="edge", color=color,
              edgecolor="black", linewidth=0.5, label="accuracy")
      # The gap: from the bar's top to the bin's mean confidence.
      low, high = np.minimum(accuracy_Z, mean_Z)[kept], np.maximum(accuracy_Z, mean_Z)[kept]
      top.bar(left_Z[kept], high - low, width_Z, bottom=low, align="edge", color="red",
              alpha=0.25, hatch="//", edgecolor="red", linewidth=0, label="gap")
      bottom.bar(left_Z[kept], count_Z[kept], width_Z, align="edge", color=color,
                 edgecolor="black", linewidth=0.5)
    top.set_title(f"{name}\nECE {error:.3f}, n={confidence_B.size}", fontsize="medium")
    top.set(xlim=(0, 1), ylim=(0, 1))
    top.tick_params(labelbottom=False)
    if c == 0:
      top.set_ylabel("accuracy")
      bottom.set_ylabel("count")
    bottom.set_xlabel("confidence")
  _save(figure, path)
  return path


def trailing_mean(values_T: Sequence[float], window: int) -> np.ndarray:
  """Each value's mean with the `window - 1` before it (fewer at the start)."""
  values_T = np.asarray(values_T, np.float64)
  sums_T = np.convolve(values_T, np.ones(window))[:values_T.size]
  return sums_T / np.minimum(np.arange(1, values_T.size + 1), window)


def _panels(records: Sequence[Mapping[str, float]], curves) -> list[dict]:
  """What each training-curve panel draws: the logged (rollout, value) points, their trailing
  mean over a twentieth of the run when there are many, the held-out points, and the note an
  empty panel shows."""
  train = [r for r in records if not any(k.startswith("heldout/") for k in r)]
  heldout = [r for r in records if any(k.startswith("heldout/") for k in r)]
  panels = []
  for key, title, held, *absent in curves:
    points = [(r["rollout"], r[key]) for r in train if key in r]
    window = max(1, len(points) // 20)
    panels.append(dict(
        title=title, points=points, note=None if points else (absent or ["not logged"])[0],
        mean=(trailing_mean([v for _, v in points], window), window)
        if len(points) > SMOOTH_ABOVE else None,
        heldout=[(r["rollout"], r[held]) for r in heldout if held in r]))
  return panels


def training_curves(records: Sequence[Mapping[str, float]], path,
                    curves=TRAINING_CURVES) -> str:
  """A panel per metric of `curves` against the rollout, from metrics.jsonl's records; the
  held-out evaluations among them (records with `heldout/...` keys) as points on the same
  panels. Returns `path`."""
  figure = _figure(3.2 * len(curves), 3.0)
  axes = figure.subplots(1, len(curves), squeeze=False)[0]
  for ax, panel, color in zip(axes, _panels(records, curves), colors(len(curves))):
    if panel["points"]:
      rollouts, values = zip(*panel["points"])
      if panel["mean"] is None:
        ax.plot(rollouts, values, color=color, marker=".")
      else:
        mean, window = panel["mean"]
        ax.plot(rollouts, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(rollouts, mean, color=color, linewidth=2, label=f"mean of {window}")
    else:
      ax.text(0.5, 0.5, panel["note"], transform=ax.transAxes, ha="center", va="center",
              color="gray")
      ax.set(xticks=[], yticks=[])
    if panel["heldout"]:
      ax.plot(*zip(*panel["heldout"]), color="black", marker="s", linestyle=":",
              label="held out")
    if panel["heldout"] or panel["mean"] is not None:
      ax.legend(fontsize="small")
    ax.set(title=panel["title"], xlabel="rollout")
    ax.grid(alpha=0.3)
  _save(figure, path)
  return path
