"""`abstain`: every question gets an "I don't know" option (arXiv 2412.14660).

The downstream sees a fifth option (`OPTION`, letter E) and an instruction that offers it
(`INSTRUCTION`, used by both presets: the original has no abstention evaluation); the
"abstain" parser (registered here) reads the paper's regexes with E allowed. Reported:
- `abstain/rate`: share of questions answered with E;
- `abstain/rate_when_wrong` / `abstain/rate_when_right`: the same over the questions the
  model gets wrong / right *without* the option (the no-hint answers, a run it brings
  along), i.e. whether it abstains where it would have erred;
- the risk/coverage point: `abstain/coverage` (share answered with A-D) and
  `abstain/selective_risk` (error rate over those), next to `abstain/accuracy_all` (right
  answers over all questions).
Calibration metrics for the method are over the answered questions.
"""

import re

import numpy as np

from prompt4trust_jax import prompts
from prompt4trust_jax.downstream import parsing
from prompt4trust_jax.evaluation import registry

LETTERS = "ABCDE"
ABSTAIN_INDEX = LETTERS.index("E")
OPTION = "E:I don't know"
INSTRUCTION = (
    "You are answering a multiple-choice question with five options (A, B, C, D, or E). "
    "Option E means that you do not know the answer: choose it instead of guessing.\n"
    "Clearly state your final answer and confidence in the following format only:\n"
    f"'{prompts.ANSWER_FORMAT}'\n"
    "Replace {LETTER} with one of A, B, C, D, or E, and {CONFIDENCE} with a number between 0 "
    "and 100.\n"
    "After giving the answer, explain your reasoning based on the image and the question.")

_ANSWER = re.compile(r"answer is\s+([A-E])", re.IGNORECASE)


def parse(text: str) -> parsing.Parsed:
  """The paper's reading (`parsing.parse_paper`) with a fifth letter, E."""
  return parsing.paper_style(_ANSWER, text)


parsing.register_parser("abstain", parse)


def with_abstain_option(example: dict) -> dict:
  """The example with "E:I don't know" after its options (the gold answer is unchanged)."""
  return {**example, "options": (*example["options"], OPTION)}


def abstention_metrics(letter_B, valid_B, gold_B, wrong_without_B=None) -> dict[str, float]:
  """The abstention numbers above; `wrong_without_B`: wrong (or invalid) without the option."""
  letter_B, valid_B, gold_B = (np.asarray(x) for x in (letter_B, valid_B, gold_B))
  abstained_B = valid_B & (letter_B == ABSTAIN_INDEX)
  answered_B = valid_B & ~abstained_B
  correct_B = answered_B & (letter_B == gold_B)
  mean = lambda x: float(np.mean(x)) if np.size(x) else float("nan")
  out = {"abstain/rate": mean(abstained_B), "abstain/coverage": mean(answered_B),
         "abstain/selective_risk": mean(~correct_B[answered_B]),
         "abstain/accuracy_all": mean(correct_B)}
  if wrong_without_B is not None:
    wrong_B = np.asarray(wrong_without_B, bool)
    out["abstain/rate_when_wrong"] = mean(abstained_B[wrong_B])
    out["abstain/rate_when_right"] = mean(abstained_B[~wrong_B])
  return out


@registry.register("abstain")
class Abstain(registry.Family):
  methods = ("abstain",)

  def runs(self, methods, settings):
    return [registry.Run("no_hint"), registry.Run("abstain", family="abstain")]

  def elicitation(self, ctx, run):
    return dict(letters=LETTERS, parser="abstain", instruction=INSTRUCTION)

  def inputs(self, ctx, run, batch):
    return [with_abstain_option(x) for x in batch]

  def score(self, method, stored):
    gold_B = np.asarray([x["answer"] for x in stored.test])
    answers, without = stored.first_answers("abstain"), stored.first_answers("no_hint")
    extra = abstention_metrics(answers.letter_B, answers.valid_B, gold_B,
                               ~(without.valid_B & (without.letter_B == gold_B)))
    # Calibration over the questions it answered.
    return registry.Scored(answers.letter_B, answers.confidence_B,
                           answers.valid_B & (answers.letter_B != ABSTAIN_INDEX), extra)
