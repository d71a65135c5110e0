"""Response parsers (paper, MedMCQA, strict) and the downstream prompt, on hand-worked cases."""

import numpy as np
import pytest

from prompt4trust_jax import fixtures, parsing, prompts

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


QUESTION = "What imaging modality was used?"
OPTIONS = ["A:CT", "B:MRI", "C:X-ray", "D:Ultrasound"]
INSTRUCTION = (
    "You are answering a multiple-choice question with four options (A, B, C, or D).\n"
    "Clearly state your final answer and confidence in the following format only:\n"
    "'In conclusion, the answer is {LETTER} with confidence {CONFIDENCE}.'\n"
    "Replace {LETTER} with one of A, B, C, or D, and {CONFIDENCE} with a number between 0 and "
    "100.\n"
    "After giving the answer, explain your reasoning based on the image and the question.")
BODY = (INSTRUCTION + "\nQuestion:\nWhat imaging modality was used?\n"
        "Options:\nA:CT\nB:MRI\nC:X-ray\nD:Ultrasound\n")


def test_downstream_prompt_worked_example():
  assert prompts.DOWNSTREAM_INSTRUCTION == INSTRUCTION
  assert (prompts.downstream_prompt(QUESTION, OPTIONS, "Look at bone contrast.") ==
          BODY + "Hint: Look at bone contrast.\n\nAnswer:")
  assert prompts.downstream_prompt(QUESTION, OPTIONS, None) == BODY + "\nAnswer:"
  assert (prompts.downstream_prompt(QUESTION, OPTIONS, prompts.FIXED_HINT) ==
          BODY + "Hint: Think step-by-step, do not be over-confident.\n\nAnswer:")
  assert (prompts.downstream_prompt(QUESTION, OPTIONS, "h", instruction="Be brief.") ==
          "Be brief.\nQuestion:\nWhat imaging modality was used?\n"
          "Options:\nA:CT\nB:MRI\nC:X-ray\nD:Ultrasound\nHint: h\n\nAnswer:")
  with pytest.raises(TypeError, match="list of option lines"):
    prompts.downstream_prompt(QUESTION, "A:CT\nB:MRI", None)


@pytest.mark.parametrize("hint", ["Look at bone contrast.", "", "\nCompare T1 and T2.", "42 mm"])
def test_downstream_prompt_split(tmp_path, hint):
  prefix, suffix = prompts.downstream_prompt_split(QUESTION, OPTIONS, hint)
  full = prompts.downstream_prompt(QUESTION, OPTIONS, hint)
  assert prefix + suffix == full
  assert prefix == BODY + "Hint:"  # nothing of the hint in the shared part
  # Tokenizing the halves apart gives the ids of the whole, so a shared prefill is exact.
  tok = fixtures.write_tokenizer(str(tmp_path), 4096)
  encode = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
  assert encode(prefix) + encode(suffix) == encode(full)
