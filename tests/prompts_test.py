"""Prompt presets: the original's strings byte for byte, the clean wording, text handling."""

import pytest

from prompt4trust_jax import prompts

QUESTION = "What imaging modality was used?"
OPTIONS = ["A:CT", "B:MRI", "C:X-ray", "D:Ultrasound"]

# The original's prompt/pmcvqa.py and prompt/pmcvqa-fixedpa.py, as its source spells the
# triple-quoted literals (the quotes, newlines and 24-space indentation belong to the strings).
ORIGINAL_POLICY_PART1 = """
                        "You are assisting a downstream vision-language model (VLM) with answering a multiple-choice question about an image. "
                        "You do not have access to the image or the correct answer. Do not give an answer to the question. "
                        "Your task is to write a neutral hint based only on the question and answer options, "
                        "to guide the VLM on what visual evidence to consider and what reasoning steps to use when answering. "
                    """
ORIGINAL_DOWNSTREAM_PART1 = """"You are answering a multiple-choice question with four options (A, B, C, or D). "
                        "Clearly state your final answer and confidence in the following format only:\n\n"
                        "'In conclusion, the answer is {LETTER} with confidence {CONFIDENCE}.'\n\n"
                        "Replace {LETTER} with one of A, B, C, or D, and {CONFIDENCE} with a number between 0 and 100.\n"
                        "After giving the answer, explain your reasoning based on the image and the question." """
ORIGINAL_FIXED_PART1 = ORIGINAL_DOWNSTREAM_PART1.replace(
    'the question." ', 'the question. Think step-by-step, do not be over-confident." ')


def test_reference_preset_renders_the_original_strings():
  p = prompts.preset("reference")
  # Its build_policy_prompt / build_downstream_prompt, worked by hand: cells are stripped.
  question, options = "  " + QUESTION + " ", ["A:CT ", "B:MRI ", "C:X-ray ", "D:Ultrasound "]
  body = "\nQuestion:\n" + QUESTION + "\nOptions:\n" + "\n".join(OPTIONS)
  assert p.policy(question, options) == ORIGINAL_POLICY_PART1 + body + "\n\nPrompt draft:"
  assert (p.downstream(question, options, " Look at the bone. ") ==
          ORIGINAL_DOWNSTREAM_PART1 + body + "\nHint:  Look at the bone. \n\nAnswer:")
  assert p.downstream(question, options, None) == ORIGINAL_DOWNSTREAM_PART1 + body + "\n\nAnswer:"
  assert p.fixed_hint(question, options) == ORIGINAL_FIXED_PART1 + body + "\n\nAnswer:"
  assert p.hint(" Look.\n") == " Look.\n"  # as decoded, not stripped
  assert ORIGINAL_DOWNSTREAM_PART1.count("\n                        ") == 4


def test_clean_preset_is_todays_text():
  p = prompts.preset("clean")
  instruction = (
      "You are answering a multiple-choice question with four options (A, B, C, or D).\n"
      "Clearly state your final answer and confidence in the following format only:\n"
      "'In conclusion, the answer is {LETTER} with confidence {CONFIDENCE}.'\n"
      "Replace {LETTER} with one of A, B, C, or D, and {CONFIDENCE} with a number between 0 and "
      "100.\n"
      "After giving the answer, explain your reasoning based on the image and the question.")
  body = (instruction + "\nQuestion:\nWhat imaging modality was used?\n"
          "Options:\nA:CT\nB:MRI\nC:X-ray\nD:Ultrasound\n")
  assert p.downstream(QUESTION, OPTIONS, "Look at bone contrast.") == (
      body + "Hint: Look at bone contrast.\n\nAnswer:")
  assert p.downstream(QUESTION, OPTIONS, None) == body + "\nAnswer:"
  assert p.fixed_hint(QUESTION, OPTIONS) == (
      body + "Hint: Think step-by-step, do not be over-confident.\n\nAnswer:")
  assert p.downstream(QUESTION, OPTIONS, "h", instruction="Be brief.") == (
      "Be brief.\nQuestion:\nWhat imaging modality was used?\n"
      "Options:\nA:CT\nB:MRI\nC:X-ray\nD:Ultrasound\nHint: h\n\nAnswer:")
  assert p.downstream(QUESTION, ["A:CT "], None).endswith("A:CT \n\nAnswer:")  # as stored
  assert p.policy(QUESTION, OPTIONS).startswith(prompts.POLICY_INSTRUCTION + "\nQuestion:\n")
  assert p.hint(" Look.\n") == "Look."


def test_bad_inputs_are_named():
  with pytest.raises(TypeError, match="list of option lines"):
    prompts.preset("clean").downstream(QUESTION, "A:CT\nB:MRI", None)
  with pytest.raises(ValueError, match="Unknown prompt preset 'paper'"):
    prompts.preset("paper")
