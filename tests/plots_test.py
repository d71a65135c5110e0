"""Reliability diagrams are written as non-trivial PNGs for any number of methods."""

import os

import numpy as np
import pytest

from prompt4trust_jax import plots


def _method(seed, n=200):
  rng = np.random.default_rng(seed)
  confidence = rng.random(n)
  return confidence, rng.random(n) < confidence


@pytest.mark.parametrize("curves", [
    {"verbalized": _method(0)},
    {"verbalized": _method(0), "prompt4trust": _method(1), "temperature": _method(2)},
    {"verbalized": _method(0), "no answers": (np.zeros(0), np.zeros(0, bool))},
], ids=["one", "three", "with_empty"])
def test_reliability_diagram_writes_a_png(tmp_path, curves):
  path = str(tmp_path / "reliability.png")
  assert plots.reliability_diagram(curves, path) == path
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 10_000  # Axes, curves and legend, not a blank canvas.


def test_reliability_diagram_with_equal_mass_bins(tmp_path):
  path = plots.reliability_diagram({"a": _method(3)}, str(tmp_path / "mass.png"), num_bins=5,
                                   binning="mass")
  assert os.path.getsize(path) > 10_000


def test_small_multiples_give_every_method_its_own_colour(tmp_path):
  curves = {f"method {i}": _method(i) for i in range(17)}  # the evaluation demo's count
  path = plots.reliability_diagram(curves, str(tmp_path / "many.png"))
  assert os.path.getsize(path) > 50_000
  assert len(set(plots.colors(17))) == 17 and len(set(plots.colors(4))) == 4


def test_training_curves_draw_each_metric_and_the_heldout_points(tmp_path):
  rng = np.random.default_rng(0)
  records = [{"rollout": 0, "heldout/ece": 0.3, "heldout/reward": -1.0, "heldout/accuracy": 0.5}]
  records += [{"rollout": t, "reward/total/mean": -1 + t / 10, "downstream/accuracy": 0.5,
               "downstream/ece": 0.3 - t / 100, "kl": rng.random() / 100,
               "hint_length/mean": 10 + t} for t in range(1, 21)]
  records += [{"rollout": 20, "heldout/ece": 0.1, "heldout/reward": -0.5, "heldout/accuracy": 0.5}]
  path = plots.training_curves(records, str(tmp_path / "training.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 30_000


def test_trailing_mean_against_worked_values():
  np.testing.assert_allclose(plots.trailing_mean([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
  np.testing.assert_allclose(plots.trailing_mean([2, 4, 9], 5), [2, 3, 5])  # window > length
  np.testing.assert_allclose(plots.trailing_mean([3, 1, 2], 1), [3, 1, 2])


def test_long_runs_are_smoothed_and_an_unlogged_metric_says_why(tmp_path):
  # 600 rollouts at beta 0, as the demo: no "kl" records.
  records = [{"rollout": t, "reward/total/mean": float(t % 7), "downstream/accuracy": 0.5,
              "downstream/ece": 0.2, "hint_length/mean": 12.0} for t in range(1, 601)]
  panels = {p["title"]: p for p in plots._panels(records, plots.TRAINING_CURVES)}
  mean, window = panels["reward"]["mean"]
  assert window == 30 and mean.shape == (600,)
  np.testing.assert_allclose(mean[-1], np.mean([t % 7 for t in range(571, 601)]))
  kl = panels["KL to the reference"]
  assert kl["points"] == [] and "beta = 0" in kl["note"]
  assert panels["reward"]["note"] is None
  short = plots._panels(records[:20], plots.TRAINING_CURVES)
  assert all(p["mean"] is None for p in short)  # 20 points are drawn as they are
  assert os.path.getsize(plots.training_curves(records, str(tmp_path / "t.png"))) > 30_000
