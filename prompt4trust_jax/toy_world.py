"""The embedded demo's world: small enough for a laptop CPU, rich enough for the method to show.

- Questions: synthetic PMC-VQA scans (`data.synthetic`) of three kinds that a tiny VLM reads
  with different success (`KINDS`): the lesion's size and the colour of its stain (the
  committed downstream: 97% and 57%) and its histological grade (not in the image at all:
  chance).
- A downstream: a tiny Qwen2-VL taught by a short supervised run through the library
  (`experiments/teach_toy_downstream.py`; the checkpoint it wrote is committed at
  `DOWNSTREAM_DIR`) to answer from the image in the answer format, and to state a
  confidence set by the hint's wording alone (`taught_confidence`): 90% with no hint or a
  neutral one, whatever the question (over-confident), lower the more the hint hedges
  (`HEDGES`), higher the more it asserts (`ASSERTIONS`). Its tokenizer is trained on
  `corpus()`, so each of those words is one token.
- A policy whose vocabulary is that tokenizer's: a random one writes word soups in which
  hedges and assertions are rare, and learns, from the paper's reward alone, which wording
  calibrates the downstream on which kind of question. It never sees the image, the answer
  or this rule.
"""

import dataclasses
import os
import re
from collections.abc import Sequence

import numpy as np

from prompt4trust_jax import prompts
from prompt4trust_jax.data import synthetic

KINDS = ("stain", "size", "grade")
IMAGE_SIZE = 112  # the processor keeps 112 x 112: 16 image tokens

HEDGES = ("maybe", "perhaps", "possibly", "unclear", "uncertain", "doubtful", "subtle",
          "faint", "ambiguous", "unsure", "tricky", "guess", "cautious", "vague", "tentative",
          "borderline")
ASSERTIONS = ("clearly", "certainly", "obvious", "definite", "evident", "plain", "distinct",
              "sharp", "explicit", "decisive", "conclusive", "striking", "surely", "exact",
              "unmistakable", "undeniable")

NEUTRAL_CONFIDENCE = 90  # percent, with no hint or a hint of tone 0
TONE_SLOPE = 200  # percent points per unit of tone: a hedge word in a 24-token hint moves it ~15

DOWNSTREAM_DIR = os.path.join(os.path.dirname(__file__), "data", "fixture", "toy_downstream")

# Longest first, so "unclear" is one hedge and not an assertion inside one.
_LEXICON = re.compile("|".join(sorted(HEDGES + ASSERTIONS, key=len, reverse=True)))
_HEDGE_SET = frozenset(HEDGES)


def tone(hint: str | None) -> float:
  """How much `hint` hedges, in [-1, 1]: the share of its non-space characters inside hedge
  words minus the share inside assertions (case-insensitive, words may touch)."""
  text = re.sub(r"\s+", "", (hint or "").lower())
  if not text:
    return 0.0
  signed = sum((1 if m.group() in _HEDGE_SET else -1) * len(m.group())
               for m in _LEXICON.finditer(text))
  return signed / len(text)


def taught_confidence(hint: str | None) -> int:
  """The confidence (percent, a multiple of 5 in [5, 95]) the downstream was taught to state
  after `hint` (None: no hint), whatever the question and whether it is right."""
  percent = NEUTRAL_CONFIDENCE - TONE_SLOPE * tone(hint)
  return int(np.clip(5 * round(percent / 5), 5, 95))


def corpus() -> list[str]:
  """What the toy world's tokenizer is trained on: the prompts' instructions, the questions
  and options, and the hint words, often enough for each word to become one token."""
  lines = [prompts.POLICY_INSTRUCTION, prompts.DOWNSTREAM_INSTRUCTION, prompts.FIXED_HINT,
           prompts.ANSWER_FORMAT, "Question:", "Options:", "Hint:", "Answer:", "Prompt draft:"]
  for kind in KINDS:
    template = synthetic.TEMPLATES[kind]
    lines += list(template.questions) + [f"{letter}:{option} " for letter, option in
                                         zip("ABCD", template.options)]
  # A word alone and after a space: both spellings become tokens.
  words = [f"{w} {w}, {w}." for w in HEDGES + ASSERTIONS]
  return lines * 4 + words * 8


def items(n: int, seed: int, kinds: Sequence[str] = KINDS) -> list[synthetic.Question]:
  """`n` synthetic questions of `kinds` from seeded stream `seed` (the demo's data set is
  stream 0's train and test rows; teaching draws other streams)."""
  return synthetic.questions(n, np.random.default_rng([seed, 7]), IMAGE_SIZE, kinds,
                             ordered_options=True)


@dataclasses.dataclass(frozen=True)
class HintTokens:
  """A tokenizer's ids of the hedges and assertions (each alone and after a space, where it
  is one token) and of every other non-special token."""
  tokenizer: object
  hedge_ids: np.ndarray
  assertion_ids: np.ndarray
  plain_ids: np.ndarray

  @classmethod
  def of(cls, tokenizer) -> "HintTokens":
    def single(words):
      ids = [tokenizer.encode(s, add_special_tokens=False) for w in words for s in (w, " " + w)]
      return np.array([i[0] for i in ids if len(i) == 1], np.int64)

    hedge_ids, assertion_ids = single(HEDGES), single(ASSERTIONS)
    if not len(hedge_ids) or not len(assertion_ids):
      raise ValueError("This tokenizer has no one-token hedge or assertion; train it on "
                       "toy_world.corpus().")
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    lexicon = set(hedge_ids.tolist()) | set(assertion_ids.tolist()) | special
    plain_ids = np.array([i for i in range(len(tokenizer)) if i not in lexicon], np.int64)
    return cls(tokenizer, hedge_ids, assertion_ids, plain_ids)


def random_hint(rng: np.random.Generator, tokens: HintTokens, max_tokens: int = 24) -> str:
  """A hint like a policy's over this tokenizer: a soup of up to `max_tokens` tokens,
  uniform over the vocabulary with hedges and assertions mixed in at rates drawn per hint
  (none beyond chance in a third of hints, many hedges or many assertions in the rest)."""
  n = max_tokens if rng.random() < 0.5 else int(rng.integers(1, max_tokens + 1))
  mix = rng.integers(3)
  p_hedge = (0.0, rng.uniform(0, 1), rng.uniform(0, 0.1))[mix]
  p_assert = (0.0, rng.uniform(0, 0.1), rng.uniform(0, 1))[mix]
  u = rng.random(n)
  ids = np.where(u < p_hedge, rng.choice(tokens.hedge_ids, n),
                 np.where(u < p_hedge + p_assert, rng.choice(tokens.assertion_ids, n),
                          rng.choice(tokens.plain_ids, n)))
  return tokens.tokenizer.decode(ids.tolist(), skip_special_tokens=True).strip()
