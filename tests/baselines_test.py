"""Sample consistency, average confidence and entropy confidence against hand-worked values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from prompt4trust_jax.evaluation.methods import consistency, entropy


def test_consistency_and_average_confidence_by_hand():
  # Question 0: first sample B (1); others B, B, C, invalid -> CSC = 2/4.
  #   CSA = (0.8 + 0.6) / (0.8 + 0.6 + 0.4 + 0 [invalid counts 0]) = 1.4 / 1.8.
  # Question 1: first sample invalid -> an invalid response (letter -1, confidences 0).
  # Question 2: every other sample disagrees at confidence 0 -> CSC 0 and CSA 0 (no 0/0).
  letter = jnp.array([[1, 1, 1, 2, 3], [-1, 0, 0, 0, 0], [2, 0, 1, 3, 0]])
  confidence = jnp.array([[0.9, 0.8, 0.6, 0.4, 0.7], [0.0, 0.5, 0.5, 0.5, 0.5],
                          [0.3, 0.0, 0.0, 0.0, 0.0]])
  valid = jnp.array([[True, True, True, True, False], [False, True, True, True, True],
                     [True] * 5])
  letter_B, csc_B, csa_B, valid_B = consistency.sample_consistency(letter, confidence, valid,
                                                                  valid="first")
  np.testing.assert_array_equal(letter_B, [1, -1, 2])
  np.testing.assert_allclose(csc_B, [0.5, 0.0, 0.0])
  np.testing.assert_allclose(csa_B, [1.4 / 1.8, 0.0, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(valid_B, [True, False, True])


def test_consistency_as_the_original_csc_by_hand():
  # The original's csc.py: an unparsed sample is (-1, 1e-12); the question is valid only if
  # all samples parse. Question 0: first B; others B (.8), B (.6), C (.4), unparsed (1e-12):
  #   CSC = 2/4; CSA = (.8 + .6) / (.8 + .6 + .4 + 1e-12 + 1e-12); invalid (one unparsed).
  # Question 1: first unparsed; others: unparsed, A (.5), unparsed, A (.5) -> the two unparsed
  #   "agree" with it: CSC = 2/4, CSA = 2e-12 / (1 + 2e-12 + 1e-12); answer -1, invalid.
  # Question 2: all parse; first C (.3), others A, B, D at 0 -> CSC 0, CSA 0 / 1e-12 = 0.
  letter = jnp.array([[1, 1, 1, 2, 3], [-1, 3, 0, 2, 0], [2, 0, 1, 3, 0]])
  confidence = jnp.array([[0.9, 0.8, 0.6, 0.4, 0.7], [0.0, 0.9, 0.5, 0.9, 0.5],
                          [0.3, 0.0, 0.0, 0.0, 0.0]])
  valid = jnp.array([[True, True, True, True, False], [False, False, True, False, True],
                     [True] * 5])
  letter_B, csc_B, csa_B, valid_B = consistency.sample_consistency(letter, confidence, valid)
  np.testing.assert_array_equal(letter_B, [1, -1, 2])
  np.testing.assert_allclose(csc_B, [0.5, 0.5, 0.0])
  np.testing.assert_allclose(csa_B, [1.4 / (1.8 + 3e-12), 2e-12 / (1 + 3e-12), 0.0], rtol=1e-6)
  np.testing.assert_array_equal(valid_B, [False, False, True])
  with pytest.raises(ValueError, match="'some'"):
    consistency.sample_consistency(letter, confidence, valid, valid="some")


def test_consistency_needs_two_samples():
  one = jnp.zeros((2, 1), jnp.int32)
  with pytest.raises(ValueError, match=">= 2 samples"):
    consistency.sample_consistency(one, one.astype(jnp.float32), one.astype(bool))


def test_entropy_confidence_by_hand():
  # Q0: A, A, B, B (valid) -> p = (1/2, 1/2): H = ln 2, conf = 1 - ln2/ln4 = 0.5; tie -> A.
  # Q1: all C -> H = 0, conf = 1.
  # Q2: A, B, C, D -> uniform, conf = 0; the invalid fifth sample is ignored.
  # Q3: nothing valid -> invalid.
  letter = jnp.array([[0, 0, 1, 1, -1], [2, 2, 2, 2, 2], [0, 1, 2, 3, -1], [-1] * 5])
  valid = letter >= 0
  letter_B, confidence_B, valid_B = entropy.entropy_confidence(letter, valid, 4)
  np.testing.assert_array_equal(letter_B, [0, 2, 0, -1])
  np.testing.assert_allclose(confidence_B, [1 - math.log(2) / math.log(4), 1.0, 0.0, 0.0],
                             atol=1e-6)
  np.testing.assert_array_equal(valid_B, [True, True, True, False])


def test_entropy_with_three_of_four_agreeing():
  # p = (3/4, 1/4): H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335; / ln 4 = 0.405639.
  letter = jnp.array([[3, 3, 1, 3]])
  _, confidence_B, _ = entropy.entropy_confidence(letter, letter >= 0, 4)
  np.testing.assert_allclose(confidence_B, [1 - 0.405639], atol=1e-5)
