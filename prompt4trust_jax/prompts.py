"""Prompt4Trust's prompt templates, as named presets (`preset(name)`).

Every prompt is assembled the same way: the policy sees
  instruction + "\\nQuestion:\\n" + question + "\\nOptions:\\n" + options + "\\n\\n"
  + "Prompt draft:"
and the downstream
  instruction + "\\nQuestion:\\n" + question + "\\nOptions:\\n" + options + "\\n" + "Hint: " + hint
  + "\\n\\n" + "Answer:"
(no hint: the "Hint: ..." line is dropped), options one per line as the data carries them.
Presets differ in their strings and in how they treat text:

- "reference": the original implementation (GitHub xingbpshen/vccrl-llm, prompt/pmcvqa.py and
  prompt/pmcvqa-fixedpa.py) byte for byte (`reference_prompts.json` beside this file: Python
  triple-quoted literals whose quote characters, newlines and 24-space indentation are part of
  the strings). Question and option cells are stripped (its data loader does), hints are given
  as decoded, not stripped, and the fixed-hint baseline is a second instruction that ends in
  "Think step-by-step, do not be over-confident." with no "Hint:" line.
- "clean": the same wording cleaned up (one sentence per line, no stray quotes). Cells are
  shown as stored, hints are stripped, and the fixed hint is given as the hint.
- "medmcqa": "clean" for text-only questions whose options are numbered "(1) ..." and
  answered by number (the original's MedMCQA strings are not public: its prompt/medmcqa.py
  is imported but absent from its repository).
"""

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

# The reply the downstream model is asked for; `constraints` builds its completions from it.
ANSWER_FORMAT = "In conclusion, the answer is {LETTER} with confidence {CONFIDENCE}."

POLICY_INSTRUCTION = (
    "You are assisting a downstream vision-language model (VLM) with answering a multiple-choice "
    "question about an image. You do not have access to the image or the correct answer. Do not "
    "give an answer to the question. Your task is to write a neutral hint based only on the "
    "question and answer options, to guide the VLM on what visual evidence to consider and what "
    "reasoning steps to use when answering.")

DOWNSTREAM_INSTRUCTION = (
    "You are answering a multiple-choice question with four options (A, B, C, or D).\n"
    "Clearly state your final answer and confidence in the following format only:\n"
    f"'{ANSWER_FORMAT}'\n"
    "Replace {LETTER} with one of A, B, C, or D, and {CONFIDENCE} with a number between 0 and "
    "100.\n"
    "After giving the answer, explain your reasoning based on the image and the question.")

FIXED_HINT = "Think step-by-step, do not be over-confident."

MEDMCQA_POLICY_INSTRUCTION = (
    "You are assisting a downstream language model with answering a medical multiple-choice "
    "question. You do not have access to the correct answer. Do not give an answer to the "
    "question. Your task is to write a neutral hint based only on the question and answer "
    "options, to guide the model on what knowledge to recall and what reasoning steps to use "
    "when answering.")
MEDMCQA_DOWNSTREAM_INSTRUCTION = (
    "You are answering a multiple-choice question with four options (1, 2, 3, or 4).\n"
    "Clearly state your final answer and confidence in the following format only:\n"
    "'In conclusion, the answer is {NUMBER} with confidence {CONFIDENCE}.'\n"
    "Replace {NUMBER} with one of 1, 2, 3, or 4, and {CONFIDENCE} with a number between 0 and "
    "100.\n"
    "After giving the answer, explain your reasoning.")

# The noise mitigation: the policy LLM cleans a noisy question before the downstream sees it.
REWRITE_QUESTION_INSTRUCTION = (
    "The medical multiple-choice question below may contain typos, abbreviations, missing or "
    "swapped words and odd capitalisation. Rewrite the question in clear, correctly spelled "
    "English without changing its meaning. Do not answer it. Reply with the rewritten question "
    "only.")


def format_options(options: Sequence[str]) -> str:
  """One option per line, as the data carries them ("A:...", "B:...")."""
  if isinstance(options, str):  # a str is a Sequence[str]; joining it would split characters
    raise TypeError(f"options must be a list of option lines, got the str {options!r}.")
  return "\n".join(options)


@dataclasses.dataclass(frozen=True)
class Preset:
  """The strings of every prompt and how question, options and hints are treated."""
  name: str
  policy_instruction: str
  downstream_instruction: str
  # The fixed-hint baseline's instruction (no hint line); None: FIXED_HINT is given as the hint.
  fixed_hint_instruction: str | None
  strip_cells: bool  # strip question and option cells before showing them
  strip_hints: bool  # strip the policy's decoded hint before the downstream sees it
  policy_tail: str = "Prompt draft:"
  hint_lead: str = "Hint: "
  answer_tail: str = "Answer:"

  def cells(self, question: str, options: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Question and options as this preset shows them."""
    if isinstance(options, str):
      raise TypeError(f"options must be a list of option lines, got the str {options!r}.")
    if self.strip_cells:
      return question.strip(), tuple(o.strip() for o in options)
    return question, tuple(options)

  def _block(self, instruction: str, question: str, options: Sequence[str]) -> str:
    question, options = self.cells(question, options)
    return f"{instruction}\nQuestion:\n{question}\nOptions:\n{format_options(options)}"

  def policy(self, question: str, options: Sequence[str], instruction: str | None = None) -> str:
    """The hint writer's user turn: instruction, question and options, never the image."""
    block = self._block(instruction or self.policy_instruction, question, options)
    return f"{block}\n\n{self.policy_tail}"

  def downstream(self, question: str, options: Sequence[str], hint: str | None,
                 instruction: str | None = None) -> str:
    """The frozen VLM's user text (the image goes before it); `hint=None`: no hint line."""
    block = self._block(instruction or self.downstream_instruction, question, options)
    if hint is None:
      return f"{block}\n\n{self.answer_tail}"
    return f"{block}\n{self.hint_lead}{hint}\n\n{self.answer_tail}"

  def fixed_hint_setting(self) -> tuple[str | None, str | None]:
    """`(instruction, hint)` of the fixed-hint baseline (None: the preset's own / no hint)."""
    if self.fixed_hint_instruction is None:
      return None, FIXED_HINT
    return self.fixed_hint_instruction, None

  def fixed_hint(self, question: str, options: Sequence[str]) -> str:
    """The downstream's user text in the fixed-hint baseline."""
    instruction, hint = self.fixed_hint_setting()
    return self.downstream(question, options, hint, instruction)

  def rewrite(self, question: str, options: Sequence[str],
              instruction: str = REWRITE_QUESTION_INSTRUCTION) -> str:
    """The rewriter's user turn: options shown for context; only the question is rewritten."""
    return f"{self._block(instruction, question, options)}\n\nRewritten question:"

  def hint(self, decoded: str) -> str:
    """The policy's decoded reply as the downstream gets it."""
    return decoded.strip() if self.strip_hints else decoded


@functools.lru_cache(maxsize=None)
def _reference_strings() -> dict[str, str]:
  path = os.path.join(os.path.dirname(__file__), "reference_prompts.json")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _reference() -> Preset:
  s = _reference_strings()
  return Preset("reference", s["policy_instruction"], s["downstream_instruction"],
                s["fixed_hint_downstream_instruction"], strip_cells=True, strip_hints=False,
                policy_tail=s["policy_tail"], hint_lead=s["hint_lead"],
                answer_tail=s["answer_tail"])


def _clean() -> Preset:
  return Preset("clean", POLICY_INSTRUCTION, DOWNSTREAM_INSTRUCTION, None, strip_cells=False,
                strip_hints=True)


def _medmcqa() -> Preset:
  return Preset("medmcqa", MEDMCQA_POLICY_INSTRUCTION, MEDMCQA_DOWNSTREAM_INSTRUCTION, None,
                strip_cells=False, strip_hints=True)


PRESETS = {"reference": _reference, "clean": _clean, "medmcqa": _medmcqa}


@functools.lru_cache(maxsize=None)
def preset(name: str) -> Preset:
  """The named preset ("reference": the original's strings; "clean": cleaned-up text)."""
  if name not in PRESETS:
    raise ValueError(f"Unknown prompt preset {name!r}; choose from {sorted(PRESETS)}.")
  return PRESETS[name]()
