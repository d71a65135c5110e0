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


CONF = jnp.array([0.9, 0.8, 0.3, 0.2])
RIGHT = jnp.array([1.0, 0.0, 1.0, 0.0])


def test_binning_conventions():
  c = jnp.array([0.1, 0.2, 1.0])
  np.testing.assert_array_equal(calibration.bin_index(c, binning="paper"), [0, 1, 9])
  np.testing.assert_array_equal(calibration.bin_index(c, binning="left"), [1, 2, 9])
  np.testing.assert_array_equal(calibration.bin_index(CONF, 2, "mass"), [1, 1, 0, 0])
  with pytest.raises(ValueError, match="Unknown binning"):
    calibration.bin_index(c, binning="quantile")


def test_ranking_and_risk_metrics_by_hand():
  # Right {0.9, 0.3} vs wrong {0.8, 0.2}: 3 of the 4 pairs are ordered right.
  assert calibration.auroc(CONF, RIGHT) == pytest.approx(0.75)
  # Risk of the k most confident: 0, 1/2, 1/3, 2/4.
  assert calibration.aurc(CONF, RIGHT) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
  assert calibration.overconfident_error_rate(CONF, RIGHT) == pytest.approx(0.25)
  nll = -(np.log(0.9) + np.log(0.2) + np.log(0.3) + np.log(0.8)) / 4
  assert calibration.nll(CONF, RIGHT) == pytest.approx(nll, rel=1e-6)


def test_mce_and_ace_by_hand():
  # Paper bins: .9 right -> .1; .8 wrong -> .8; .3 right -> .7; .2 wrong -> .2.
  assert calibration.mce(CONF, RIGHT) == pytest.approx(0.8)
  # Two equal-mass bins {.2, .3}: |1 - .5|/2 = .25; {.8, .9}: |1 - 1.7|/2 = .35.
  assert calibration.ace(CONF, RIGHT, num_bins=2) == pytest.approx(0.3)


def test_bootstrap_interval_brackets_the_estimate():
  rng = np.random.default_rng(0)
  conf = jnp.asarray(rng.random(200), jnp.float32)
  right = jnp.asarray(rng.random(200) < conf, jnp.float32)
  low, high = calibration.bootstrap(calibration.brier, conf, right, num_samples=500)
  point = calibration.brier(conf, right)
  assert low < point < high and high - low < 0.1
