"""Reliability diagrams for comparing methods' confidence calibration, written as PNGs."""

import numpy as np
# The Agg canvas on a bare Figure, not pyplot: no display needed, and no global backend
# switched under a caller's notebook.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prompt4trust_jax import calibration


def reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str,
                        num_bins: int = 10, binning: str = "paper") -> str:
  """Accuracy vs mean confidence per non-empty bin for each method, over its confidence histogram.

  `curves` maps a method's name to (confidence_B, correct_B); the legend gives each one's
  ECE under `binning`. A method with no samples is listed (ECE nan) but draws nothing.
  Returns `path`.
  """
  figure = Figure(figsize=(5, 6.5))
  FigureCanvasAgg(figure)
  top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  top.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect")
  edges = np.linspace(0, 1, num_bins + 1)
  for name, (confidence_B, correct_B) in curves.items():
    confidence_B = np.asarray(confidence_B, np.float32)
    correct_B = np.asarray(correct_B, np.float32)
    if confidence_B.size:
      count_Z, accuracy_Z, mean_Z = map(np.asarray, calibration.reliability_bins(
          confidence_B, correct_B, num_bins, binning))
      error = float(calibration.ece(confidence_B, correct_B, num_bins, binning))
    else:
      count_Z, accuracy_Z, mean_Z, error = np.zeros(0), np.zeros(0), np.zeros(0), np.nan
    kept_Z = count_Z > 0
    line, = top.plot(mean_Z[kept_Z], accuracy_Z[kept_Z], marker="o",
                     label=f"{name} (ECE {error:.3f}, n={confidence_B.size})")
    bottom.hist(confidence_B, bins=edges, histtype="step", color=line.get_color())
  top.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), ylabel="accuracy", title="Reliability diagram")
  top.legend(loc="upper left", fontsize="small")
  bottom.set(xlabel="confidence", ylabel="count")
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  return path
