"""Response parsers (paper, MedMCQA, strict) and the downstream prompt, on hand-worked cases."""

import numpy as np
import pytest

from prompt4trust_jax.downstream import parsing

P = parsing.Parsed


@pytest.mark.parametrize("text, expected", [
    ("In conclusion, the answer is B with confidence 80.", P("B", 0.8, True)),
    ("in conclusion, the answer is c with confidence 7. The lesion...", P("C", 0.07, True)),
    ("THE ANSWER IS\nD WITH CONFIDENCE\t100", P("D", 1.0, True)),
    ("I am not sure. My confidence 60.", P(None, 0.6, False)),
    ("In conclusion, the answer is A.", P("A", None, False)),
    ("No structured reply at all.", P(None, None, False)),
    ("the answer is A with confidence 150.", P("A", 1.0, True)),  # capped at 100
    ("the answer is A with confidence 0.85.", P("A", 0.0, True)),  # the documented quirk
    ("the answer is A with confidence 1500.", P("A", 1.0, True)),  # \d{1,3} reads "150"
    ("the answer is: A with confidence 90.", P(None, 0.9, False)),  # no colon allowed
    ("the answer is based on the image; answer is C, confidence 40", P("B", 0.4, True)),  # quirk
    ("answer is B with confidence 30. On reflection the answer is C with confidence 90.",
     P("B", 0.3, True)),  # first match wins
])
def test_paper_parser(text, expected):
  assert parsing.parse(text) == expected
  assert parsing.parse(text, "paper") == expected


@pytest.mark.parametrize("text, expected", [
    ("In conclusion, the answer is 2 with confidence 75.", P("B", 0.75, True)),
    ("the answer is (2) with confidence (90)", P("B", 0.9, True)),
    ("the answer is 4 with confidence 100", P("D", 1.0, True)),
    ("the answer is 1 with confidence 250", P("A", 1.0, True)),  # capped like the paper's
    ("the answer is 5 with confidence 60", P(None, 0.6, False)),  # only options 1-4 exist
    ("the answer is 0 with confidence 60", P(None, 0.6, False)),
    ("the answer is B with confidence 60", P(None, 0.6, False)),  # letters are not options here
    ("The Answer Is 3 with Confidence 60", P(None, None, False)),  # case-sensitive, as written
    ("the answer is 3", P("C", None, False)),
])
def test_medmcqa_parser(text, expected):
  assert parsing.parse(text, "medmcqa") == expected


@pytest.mark.parametrize("text, expected", [
    ("In conclusion, the answer is B with confidence 80.", P("B", 0.8, True)),
    ("Answer: (C). Confidence: 85%", P("C", 0.85, True)),
    ("the answer is: [D], confidence 0.85", P("D", 0.85, True)),
    ("the answer is A with a confidence of 90", P("A", 0.9, True)),
    ("the answer is A, confidence level: 72.5", P("A", 0.725, True)),
    ("the answer is A, confidence is 1.0", P("A", 1.0, True)),
    ("the answer is A, confidence 1", P("A", 0.01, True)),  # no "." and no "%": a percentage
    ("the answer is A, confidence 0.5%", P("A", 0.005, True)),
    ("the answer is A with confidence 150", P("A", None, False)),  # refused, not capped
    ("the answer is A with confidence 101%", P("A", None, False)),
    ("the answer is A with confidence 1.2.3", P("A", None, False)),
    ("the answer is based on the image, confidence 40", P(None, 0.4, False)),
    ("the answer is a good question, confidence 40", P(None, 0.4, False)),
    ("answer is B with confidence 30, then answer is C with confidence 90", P("B", 0.3, True)),
])
def test_strict_parser(text, expected):
  got = parsing.parse(text, "strict")
  assert (got.letter, got.valid) == (expected.letter, expected.valid)
  assert got.confidence == pytest.approx(expected.confidence)


def test_unknown_parser_is_named():
  with pytest.raises(ValueError, match="'fuzzy'.*medmcqa"):
    parsing.parse("the answer is A with confidence 1", "fuzzy")


def test_parse_batch():
  texts = ["the answer is C with confidence 64", "the answer is A", "answer is d confidence 0",
           "answer is B with confidence 0.85"]
  letters, confidences, valid = parsing.parse_batch(texts)
  np.testing.assert_array_equal(letters, np.array([2, -1, 3, 1], np.int32))
  np.testing.assert_array_equal(confidences, np.array([0.64, 0.0, 0.0, 0.0], np.float32))
  np.testing.assert_array_equal(valid, [True, False, True, True])
  assert (letters.dtype, confidences.dtype, valid.dtype) == (np.int32, np.float32, np.bool_)
  _, confidences, _ = parsing.parse_batch(texts, "strict")
  assert confidences[3] == np.float32(0.85)
  with pytest.raises(TypeError, match="one str"):
    parsing.parse_batch("the answer is A with confidence 1")


