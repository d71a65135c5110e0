"""Calibration metrics against hand-worked values."""

import functools
import json

import jax
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


def test_auroc_ties_and_undefined_cases():
  # Right {.5, .8} vs wrong {.5, .2}: (.5,.5) tie = 1/2, the other three pairs ordered right.
  conf = jnp.array([0.5, 0.8, 0.5, 0.2])
  assert calibration.auroc(conf, jnp.array([1, 1, 0, 0])) == pytest.approx(3.5 / 4)
  # No (right, wrong) pair: undefined, not 0.
  assert np.isnan(calibration.auroc(conf, jnp.ones(4)))
  assert np.isnan(calibration.auroc(conf, jnp.zeros(4)))


def test_auroc_matches_the_pairwise_definition_with_ties():
  rng = np.random.default_rng(1)
  conf = np.round(rng.random(60), 1).astype(np.float32)  # Rounding makes many ties.
  right = rng.random(60) < conf
  # Every (right, wrong) pair, counted one by one.
  wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a in conf[right] for b in conf[~right]]
  assert calibration.auroc(jnp.asarray(conf), jnp.asarray(right)) == pytest.approx(
      np.mean(wins), abs=1e-6)


def test_selective_risk_curve_by_hand():
  conf = jnp.array([0.6, 0.9, 0.6, 0.3, 0.9])
  right = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0])
  # Thresholds, most confident first: >= .9 keeps items 1, 4 (1 error of 2); >= .6 adds 0, 2
  # (2 of 4); >= .3 adds 3 (2 of 5). Each tied row carries its group's point.
  coverage, risk = calibration.selective_risk_curve(conf, right)
  np.testing.assert_allclose(coverage, [0.4, 0.4, 0.8, 0.8, 1.0], rtol=1e-6)
  np.testing.assert_allclose(risk, [1 / 2, 1 / 2, 2 / 4, 2 / 4, 2 / 5], rtol=1e-6)
  assert calibration.aurc(conf, right) == pytest.approx((4 * 1 / 2 + 2 / 5) / 5)
  coverage, risk = calibration.selective_risk_curve(jnp.array([0.7]), jnp.array([0.0]))
  np.testing.assert_allclose(coverage, [1.0])
  np.testing.assert_allclose(risk, [1.0])


def test_aurc_two_tied_rows_in_either_order():
  # One threshold keeps both rows: risk 1/2 for each, whichever comes first.
  aurc = jax.jit(calibration.aurc)
  assert aurc(jnp.array([0.7, 0.7]), jnp.array([1.0, 0.0])) == pytest.approx(0.5)
  assert aurc(jnp.array([0.7, 0.7]), jnp.array([0.0, 1.0])) == pytest.approx(0.5)


def test_aurc_mixing_ties_and_distinct_values_by_hand():
  conf = jnp.array([0.8, 0.5, 0.8, 0.5, 0.5, 0.2])
  right = jnp.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
  # >= .8: rows 0, 2, 1 error of 2 -> risk 1/2 at coverage 2/6.
  # >= .5: adds rows 1, 3, 4 (2 errors) -> 3 of 5 at 5/6.
  # >= .2: adds row 5 (right) -> 3 of 6 at 1.
  # AURC: rows weigh 1/6 each at their group's risk: (2 x 1/2 + 3 x 3/5 + 1/2) / 6 = 0.55.
  coverage, risk = calibration.selective_risk_curve(conf, right)
  np.testing.assert_allclose(coverage, [2 / 6, 2 / 6, 5 / 6, 5 / 6, 5 / 6, 1.0], rtol=1e-6)
  np.testing.assert_allclose(risk, [1 / 2, 1 / 2, 3 / 5, 3 / 5, 3 / 5, 1 / 2], rtol=1e-6)
  assert calibration.aurc(conf, right) == pytest.approx(0.55, abs=1e-6)


def test_aurc_with_many_ties_matches_numpy_and_ignores_row_order():
  rng = np.random.default_rng(2)
  conf = np.round(rng.random(80), 1).astype(np.float32)  # Rounding makes many ties.
  right = (rng.random(80) < conf).astype(np.float32)
  # Row by row: the error rate of every row at least as confident as this one.
  expected = np.mean([np.mean(1 - right[conf >= c]) for c in conf])
  aurc = jax.jit(calibration.aurc)
  for _ in range(5):
    order = rng.permutation(80)
    assert aurc(jnp.asarray(conf[order]), jnp.asarray(right[order])) == pytest.approx(
        expected, abs=1e-6)


def test_nll_stays_finite_at_confidence_0_and_1():
  # Right at 1 and wrong at 0 cost nothing; the other two cost -log(1e-12) = 27.631021 each.
  out = calibration.nll(jnp.array([1.0, 0.0, 1.0, 0.0]), jnp.array([1.0, 0.0, 0.0, 1.0]))
  assert out == pytest.approx(2 * 27.631021 / 4, rel=1e-5)


def test_reliability_bins_by_hand():
  count, accuracy, mean = calibration.reliability_bins(CONF, RIGHT, num_bins=2)
  # [0, .5]: {.3 right, .2 wrong}; (.5, 1]: {.9 right, .8 wrong}.
  np.testing.assert_allclose(count, [2, 2])
  np.testing.assert_allclose(accuracy, [0.5, 0.5])
  np.testing.assert_allclose(mean, [0.25, 0.85], rtol=1e-6)
  c, y = jnp.array([0.5, 0.1]), jnp.array([1.0, 0.0])
  # Paper bins put .5 in [0, .5] with .1, leaving (.5, 1] empty; left-closed bins split them.
  count, accuracy, mean = calibration.reliability_bins(c, y, 2, "paper")
  np.testing.assert_allclose(count, [2, 0])
  np.testing.assert_allclose(accuracy, [0.5, np.nan])
  np.testing.assert_allclose(mean, [0.3, np.nan], rtol=1e-6)
  count, accuracy, mean = calibration.reliability_bins(c, y, 2, "left")
  np.testing.assert_allclose(count, [1, 1])
  np.testing.assert_allclose(accuracy, [0.0, 1.0])
  np.testing.assert_allclose(mean, [0.1, 0.5], rtol=1e-6)


def test_bootstrap_skips_resamples_where_the_metric_is_undefined():
  # A resample holding both items is {.9 right, .2 wrong}: AUROC 1. The rest (one class only)
  # are NaN and dropped, so the interval is exactly [1, 1].
  interval = jax.jit(lambda c, y: calibration.bootstrap(calibration.auroc, c, y, 200))
  low, high = interval(jnp.array([0.9, 0.2]), jnp.array([1.0, 0.0]))
  assert (float(low), float(high)) == (1.0, 1.0)


def test_summary_keys_unchanged_and_auroc_nan_when_all_right():
  out = calibration.summary(jnp.array([0.9, 0.6, 0.7]), jnp.ones(3, bool), jnp.ones(3, bool))
  assert set(out) == {"accuracy", "ece", "mce", "brier", "nll", "auroc", "aurc",
                      "overconfident_errors", "invalid_rate", "confidence/mean",
                      "confidence/std"}
  assert np.isnan(out["auroc"]) and out["aurc"] == 0 and out["accuracy"] == 1


# One setting and few lengths throughout: each new length compiles population_metrics again.
POP_ARGS = dict(num_bins=2, threshold=0.5, bootstrap_samples=200)


def test_population_metrics_by_hand():
  # Three valid answers and one invalid (its confidence and correctness are ignored).
  out = calibration.population_metrics([0.9, 0.5, 0.4, 0.0], [True, False, True, True],
                                       [True, True, True, False], **POP_ARGS)
  assert out["invalid_rate"] == 0.25
  # "all": c = .9 .5 .4 1e-12, right = 1 0 1 0.
  #   paper bins [0,.5] {.5w .4r 1e-12w}: |1 - .9| = .1; (.5,1] {.9r}: .1 -> ECE .2/4, MCE .1.
  #   left bins [0,.5) {.4r 1e-12w}: |1 - .4| = .6; [.5,1] {.9r .5w}: |1 - 1.4| = .4 -> 1/4.
  #   mass bins: ranks 1e-12, .4 | .5, .9 -> the left partition: ECE 1/4, ACE (.6/2 + .4/2)/2.
  #   Brier (.01 + .25 + .36 + 0) / 4. NLL -(ln .9 + ln .5 + ln .4 + ln 1) / 4.
  #   AUROC: right {.9, .4} vs wrong {.5, 0}: 3 of 4 pairs. Risks 0, 1/2, 1/3, 2/4.
  #   Over-confident: the .5 wrong one. Mean 1.8/4; deviations .45 .05 .05 .45 -> var .41/4.
  nll_sum = -(np.log(0.9) + np.log(0.5) + np.log(0.4))
  expected = {
      "all": dict(count=4, accuracy=0.5, ece=0.05, ece_left=0.25, ece_mass=0.25, mce=0.1,
                  ace=0.25, brier=0.62 / 4, nll=nll_sum / 4, auroc=0.75,
                  aurc=(0 + 1 / 2 + 1 / 3 + 2 / 4) / 4, overconfident_errors=0.25,
                  confidence_mean=0.45, confidence_std=np.sqrt(0.41 / 4)),
      # "valid": c = .9 .5 .4, right = 1 0 1. Paper: {.5w .4r} .1, {.9r} .1 -> .2/3.
      #   Left: {.4r} .6, {.9r .5w} .4 -> 1/3. Mass (rank * 2 // 3 = 0 0 1): {.4 .5} .1,
      #   {.9} .1 -> ECE .2/3, ACE (.1/2 + .1)/2. AUROC: .9 > .5, .4 < .5 -> 1/2.
      #   Risks 0, 1/2, 1/3. Mean .6; deviations .3 .1 .2 -> var .14/3.
      "valid": dict(count=3, accuracy=2 / 3, ece=0.2 / 3, ece_left=1 / 3, ece_mass=0.2 / 3,
                    mce=0.1, ace=0.075, brier=0.62 / 3, nll=nll_sum / 3, auroc=0.5,
                    aurc=(0 + 1 / 2 + 1 / 3) / 3, overconfident_errors=1 / 3,
                    confidence_mean=0.6, confidence_std=np.sqrt(0.14 / 3))}
  for population, metrics in expected.items():
    for name, value in metrics.items():
      assert out[f"{population}/{name}"] == pytest.approx(value, abs=1e-6), (population, name)
    assert isinstance(out[f"{population}/count"], int)
    for name in calibration.BOOTSTRAPPED:
      low, high = out[f"{population}/{name}_ci"]
      assert isinstance(low, float) and low <= out[f"{population}/{name}"] <= high, name
  assert json.loads(json.dumps(out)) == out  # Flat and JSON-friendly.


def test_population_metrics_edge_cases():
  # Every answer invalid: the valid population is empty (NaN), "all" is all wrong at 1e-12.
  out = calibration.population_metrics([0.3, 0.6, 0.9, 1.0], [True] * 4, [False] * 4,
                                       **POP_ARGS)
  assert out["invalid_rate"] == 1.0 and out["valid/count"] == 0 and out["all/count"] == 4
  assert all(np.isnan(v).all() for k, v in out.items() if k.startswith("valid/") and
             k != "valid/count")
  assert out["all/accuracy"] == 0 and out["all/aurc"] == 1 and np.isnan(out["all/auroc"])
  # One sample, right at .7: ECE .3, Brier .09, risk 0, no spread, AUROC undefined.
  out = calibration.population_metrics([0.7], [True], [True], **POP_ARGS)
  assert out["valid/count"] == 1 and out["valid/accuracy_ci"] == [1.0, 1.0]
  assert out["valid/ece"] == pytest.approx(0.3) and out["valid/brier"] == pytest.approx(0.09)
  assert out["valid/aurc"] == 0 and out["valid/confidence_std"] == 0
  assert np.isnan(out["valid/auroc"]) and np.isnan(out["valid/auroc_ci"]).all()
  # All right at confidences 0, 1, 1: paper bins [0,.5] {0r} gap 1, (.5,1] {1r 1r} gap 0 ->
  # ECE 1/3; Brier 1/3; NLL -ln(1e-12) / 3; nothing wrong, so no risk; AUROC NaN, not 0.
  out = calibration.population_metrics([0.0, 1.0, 1.0], [True] * 3, [True] * 3, **POP_ARGS)
  assert out["all/ece"] == pytest.approx(1 / 3) and out["all/brier"] == pytest.approx(1 / 3)
  assert out["all/nll"] == pytest.approx(27.631021 / 3, rel=1e-5) and out["all/aurc"] == 0
  assert np.isnan(out["all/auroc"]) and np.isnan(out["all/auroc_ci"]).all()
  # All wrong at 0, 1, 1: NLL (0 + 2 x 27.631021) / 3; risk 1 throughout; the 1s (>= .5) are
  # over-confident.
  out = calibration.population_metrics([0.0, 1.0, 1.0], [False] * 3, [True] * 3, **POP_ARGS)
  assert out["all/nll"] == pytest.approx(2 * 27.631021 / 3, rel=1e-5) and out["all/aurc"] == 1
  assert out["all/overconfident_errors"] == pytest.approx(2 / 3)
  assert np.isnan(out["all/auroc"])
  with pytest.raises(ValueError, match="1-D of one length"):
    calibration.population_metrics([0.5, 0.5], [True], [True, True])


def test_apply_temperature_by_hand():
  logits = jnp.log(jnp.array([[1.0, 3.0]]))
  np.testing.assert_allclose(calibration.apply_temperature(logits, 1.0), [[0.25, 0.75]],
                             rtol=1e-6)
  # T = 2: softmax(0, ln(3)/2) = (1, sqrt 3) / (1 + sqrt 3) = (.3660254, .6339746).
  np.testing.assert_allclose(calibration.apply_temperature(logits, 2.0),
                             [[0.3660254, 0.6339746]], rtol=1e-6)


def test_fit_temperature_closed_form_two_options():
  # Every row has logits (d, 0); gold is option 0 twice, option 1 once. With b = 1/T the NLL
  # is -(2 ln s(bd) + ln s(-bd)) / 3 (s the sigmoid); its derivative vanishes where
  # 2 (1 - s) = s, i.e. s(bd) = 2/3, bd = ln 2, so T = d / ln 2: 2.5 for d = 2.5 ln 2.
  d = 2.5 * np.log(2)
  logits = jnp.array([[d, 0.0]] * 3)
  labels = jnp.array([0, 0, 1])
  fit = functools.partial(calibration.fit_temperature, t_min=0.1, t_max=10.0)  # One compile.
  assert float(fit(logits, labels)) == pytest.approx(2.5, rel=1e-4)
  # Log-probabilities (a per-row shift) give the same T.
  log_probs = jax.nn.log_softmax(logits + jnp.array([[3.0], [-1.0], [0.5]]), axis=-1)
  assert float(fit(log_probs, labels)) == pytest.approx(2.5, rel=1e-4)
  # Gold always on top: the NLL falls as T -> 0, so the fit stops at t_min; always below, it
  # falls as T -> inf, so t_max.
  assert float(fit(logits, jnp.zeros(3, int))) == pytest.approx(0.1)
  assert float(fit(logits, jnp.ones(3, int))) == pytest.approx(10.0)
  with pytest.raises(ValueError, match=r"label_B \[B\]"):
    calibration.fit_temperature(logits, labels[:2])


def test_fit_temperature_recovers_the_sampling_temperature():
  B, C, T = 4000, 4, 2.5
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (B, C))
  probs = np.exp(logits / T)
  probs /= probs.sum(1, keepdims=True)
  labels = (rng.random(B)[:, None] > np.cumsum(probs, 1)).sum(1)  # Inverse-CDF sampling.
  # The MLE of b = 1/T has asymptotic sd 1 / sqrt(B I), with Fisher information per sample
  # I = E[Var_{softmax(z b)}(z)]; by the delta method sd(T) = T^2 sd(b). Allow 4 sd.
  fisher = np.mean((probs * logits**2).sum(1) - (probs * logits).sum(1) ** 2)
  sd = T**2 / np.sqrt(B * fisher)
  assert sd < 0.1  # The check stays informative.
  fitted = float(calibration.fit_temperature(jnp.asarray(logits, jnp.float32),
                                             jnp.asarray(labels)))
  assert abs(fitted - T) < 4 * sd
