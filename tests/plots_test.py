"""Reliability diagrams are written as non-trivial PNGs for any number of methods."""

import os

import numpy as np
import pytest

from prompt4trust_jax.evaluation import plots


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
