"""The "I don't know" evaluation: every question gets an abstain option (arXiv 2412.14660).

The downstream sees a fifth option (`prompts.ABSTAIN_OPTION`, letter E) and an instruction
that offers it (`prompts.ABSTAIN_INSTRUCTION`); the "abstain" parser reads E. Reported:
- `abstain/rate`: share of questions answered with E;
- `abstain/rate_when_wrong` / `abstain/rate_when_right`: the same over the questions the
  model gets wrong / right *without* the option (the no-hint answers), i.e. whether it
  abstains where it would have erred;
- the risk/coverage point: `abstain/coverage` (share answered with A-D) and
  `abstain/selective_risk` (error rate over those), next to `abstain/accuracy_all` (right
  answers over all questions).
Calibration metrics for the method are over the answered questions.
"""

import numpy as np

from prompt4trust_jax import parsing, prompts

ABSTAIN_INDEX = parsing.ABSTAIN_LETTERS.index("E")


def with_abstain_option(example: dict) -> dict:
  """The example with "E:I don't know" after its options (the gold answer is unchanged)."""
  return {**example, "options": (*example["options"], prompts.ABSTAIN_OPTION)}


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
