"""The abstention evaluation's numbers against hand-worked values, and its parser."""

import math

import numpy as np

from prompt4trust_jax.downstream import parsing
from prompt4trust_jax.evaluation.methods import abstain as abstention


def test_abstention_metrics_by_hand():
  # Five questions, gold A A B C D. With the E option the model answers: A (right),
  # E (abstains), B (right), E (abstains), invalid. Without it, it was wrong on 1, 3 and 4.
  letter = np.array([0, 4, 1, 4, -1])
  valid = np.array([True, True, True, True, False])
  gold = np.array([0, 0, 1, 2, 3])
  wrong_without = np.array([False, True, False, True, True])
  m = abstention.abstention_metrics(letter, valid, gold, wrong_without)
  assert m["abstain/rate"] == 2 / 5
  assert m["abstain/coverage"] == 2 / 5  # A and B answered; the invalid one is neither
  assert m["abstain/selective_risk"] == 0.0  # both answered questions right
  assert m["abstain/accuracy_all"] == 2 / 5
  assert m["abstain/rate_when_wrong"] == 2 / 3  # abstained on 1 and 3 of the wrong 1, 3, 4
  assert m["abstain/rate_when_right"] == 0.0


def test_nothing_answered_gives_nan_risk_not_an_error():
  m = abstention.abstention_metrics(np.array([4, 4]), np.array([True, True]), np.array([0, 1]))
  assert m["abstain/rate"] == 1.0 and m["abstain/coverage"] == 0.0
  assert math.isnan(m["abstain/selective_risk"]) and "abstain/rate_when_wrong" not in m


def test_abstain_option_and_parser():
  example = {"id": "x", "question": "q", "options": ("A:a", "B:b", "C:c", "D:d"), "answer": 2}
  assert abstention.with_abstain_option(example)["options"][-1] == abstention.OPTION
  assert example["options"][-1] == "D:d"  # the input is left alone
  assert parsing.parse("In conclusion, the answer is E with confidence 40.", "abstain") == \
      parsing.Parsed("E", 0.4, True)
  assert not parsing.parse("In conclusion, the answer is E with confidence 40.", "paper").valid
  letter, _, _ = parsing.parse_batch(["the answer is E with confidence 1",
                                      "the answer is B with confidence 1"], "abstain")
  assert letter.tolist() == [4, 1]
  assert "(A, B, C, D, or E)" in abstention.INSTRUCTION
