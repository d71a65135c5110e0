"""Calibration metrics against hand-worked values."""

import jax.numpy as jnp
import numpy as np
import pytest

from prompt4trust_jax import calibration


def test_paper_bin_edges():
  c = jnp.array([0.0, 0.05, 0.1, 0.1001, 0.2, 0.95, 1.0])
  np.testing.assert_array_equal(calibration.bin_index(c), [0, 0, 0, 1, 1, 9, 9])


def test_ece_and_brier_by_hand():
  # Bin [0, .1]: conf .05 wrong -> gap .05. Bin (.7, .8]: confs .75, .8; 1 of 2 right ->
  # |1 - 1.55| = .55. Bin (.9, 1]: conf 1.0 right -> 0. ECE = (.05 + .55 + 0) / 4.
  conf = jnp.array([0.05, 0.75, 0.8, 1.0])
  correct = jnp.array([0.0, 1.0, 0.0, 1.0])
  assert calibration.ece(conf, correct) == pytest.approx(0.6 / 4, abs=1e-6)
  assert calibration.brier(conf, correct) == pytest.approx(
      (0.05**2 + 0.25**2 + 0.8**2 + 0.0) / 4, abs=1e-6)


def test_summary_counts_invalid_as_wrong_at_tiny_confidence():
  out = calibration.summary(jnp.array([0.9, 0.7, 0.0]), jnp.array([True, True, False]),
                            jnp.array([True, False, True]))
  assert out["accuracy"] == pytest.approx(1 / 3)
  assert out["invalid_rate"] == pytest.approx(1 / 3)
  assert out["brier"] == pytest.approx((0.01 + 0.49 + 1e-24) / 3, abs=1e-6)
  # bins: .9 -> (.8,.9] right: |1-.9|=.1; .7 -> (.6,.7] wrong: .7; 1e-12 -> [0,.1] wrong: 1e-12
  assert out["ece"] == pytest.approx(0.8 / 3, abs=1e-6)
