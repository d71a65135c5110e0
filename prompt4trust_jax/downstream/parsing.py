"""Reading the downstream model's answer letter and confidence (the original's regexes and more).

Parsers are chosen by name from `PARSERS`:

- "paper": exactly the reference regexes. The answer is the first `answer is\\s+([A-D])`
  (case-insensitive, so "the answer is based on" reads as B); the confidence is the first
  `confidence\\s+(\\d{1,3})` (case-insensitive), capped at 100 and divided by 100, so
  "confidence 0.85" reads as 0 and "confidence 1500" as 1.0. Kept as is: rewards and metrics
  must match the paper's.
- "medmcqa": the MedMCQA variant, options numbered 1-4: the first `answer is \\(?(\\d+)\\)?` and
  the first `confidence \\(?(\\d+)\\)?` (case-sensitive, single spaces, as the original's
  MedMCQA patterns). Option numbers 1-4 become letters A-D; any other number makes the response
  invalid. The confidence is capped at 100 like the paper's.
- "strict": a stricter, more robust reading, for analysis (see `parse_strict`).
More may be registered (`register_parser`): the abstention evaluation adds "abstain", the
paper's regexes with a fifth letter (`evaluation/methods/abstain.py`).

A response is valid only when both the letter and the confidence were read; `Parsed` keeps
whichever half was found so failures can be inspected.
"""

from collections.abc import Callable, Sequence
import dataclasses
import re

import numpy as np

LETTERS = "ABCD"
# Every letter a parser may read, in option-index order (A=0, ...; E=4: a fifth option).
OPTION_LETTERS = "ABCDEFGHIJ"


@dataclasses.dataclass(frozen=True)
class Parsed:
  letter: str | None  # "A".."D"
  confidence: float | None  # in [0, 1]
  valid: bool


def _parsed(letter: str | None, confidence: float | None) -> Parsed:
  return Parsed(letter, confidence, letter is not None and confidence is not None)


_PAPER_ANSWER = re.compile(r"answer is\s+([A-D])", re.IGNORECASE)
_PAPER_CONFIDENCE = re.compile(r"confidence\s+(\d{1,3})", re.IGNORECASE)


def paper_style(answer_re: re.Pattern, text: str) -> Parsed:
  """The letter from `answer_re` and the paper's confidence regex."""
  answer = answer_re.search(text)
  confidence = _PAPER_CONFIDENCE.search(text)
  return _parsed(answer and answer.group(1).upper(),
                 confidence and min(int(confidence.group(1)), 100) / 100)


def parse_paper(text: str) -> Parsed:
  return paper_style(_PAPER_ANSWER, text)


_MEDMCQA_ANSWER = re.compile(r"answer is \(?(\d+)\)?")
_MEDMCQA_CONFIDENCE = re.compile(r"confidence \(?(\d+)\)?")


def parse_medmcqa(text: str) -> Parsed:
  answer = _MEDMCQA_ANSWER.search(text)
  confidence = _MEDMCQA_CONFIDENCE.search(text)
  option = int(answer.group(1)) if answer else 0
  return _parsed(LETTERS[option - 1] if 1 <= option <= len(LETTERS) else None,
                 confidence and min(int(confidence.group(1)), 100) / 100)


# The letter must stand alone: "answer is Based" is not an answer.
_STRICT_ANSWER = re.compile(
    r"(?i:answer)(?:\s+(?i:is)\s*:?|\s*:)\s*[(\[]?([A-D])[)\]]?(?![A-Za-z0-9])")
# The number must be whole: "1.2.3" is not read as 1.2 or 1.
_STRICT_CONFIDENCE = re.compile(
    r"(?i:confidence)(?:\s+(?i:level|score))?\s*(?:(?i:is|of)\s+|[:=]\s*)?"
    r"(\d+(?:\.\d+)?)(?![\d.]*\d)(\s*%)?")


def parse_strict(text: str) -> Parsed:
  """A stricter, more robust reading than the paper's (not the paper's numbers).

  Answer: the first "answer is X", "answer is: X" or "answer: X" ("answer"/"is" in any case),
  where X is an upper-case A-D, optionally in () or [], and not followed by a letter or digit
  ("answer is Based" and "the answer is a" are not answers).
  Confidence: the first "confidence" (any case), optionally followed by " level" or " score",
  then optionally "is"/"of" or ":"/"=", then a non-negative number with optional decimals and
  an optional "%". With "%" the number is a percentage; without, a decimal in [0, 1] ("0.85",
  "1.0") is a probability and anything else ("85", "85.5", "1") is a percentage. A percentage
  above 100 makes the confidence unreadable rather than being capped.
  """
  answer = _STRICT_ANSWER.search(text)
  confidence = None
  match = _STRICT_CONFIDENCE.search(text)
  if match:
    number, percent = match.group(1), match.group(2)
    value = float(number)
    if not percent and "." in number and value <= 1:
      confidence = value
    elif value <= 100:
      confidence = value / 100
  return _parsed(answer and answer.group(1), confidence)


PARSERS: dict[str, Callable[[str], Parsed]] = {
    "paper": parse_paper,
    "medmcqa": parse_medmcqa,
    "strict": parse_strict,
}


def register_parser(name: str, parser: Callable[[str], Parsed]):
  if PARSERS.get(name, parser) is not parser:
    raise ValueError(f"A different parser {name!r} is already registered.")
  PARSERS[name] = parser


def get_parser(name: str) -> Callable[[str], Parsed]:
  if name not in PARSERS:
    raise ValueError(f"Unknown parser {name!r}; choose from {sorted(PARSERS)}.")
  return PARSERS[name]


def parse(text: str, parser: str = "paper") -> Parsed:
  """Reads one downstream response with the named parser."""
  return get_parser(parser)(text)


def parse_batch(texts: Sequence[str],
                parser: str = "paper") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Arrays for reward and metric code: `(letter_idx_B, confidence_B, valid_B)`.

  letter_idx is int32 with A=0..D=3 (E=4 for a fifth option, `OPTION_LETTERS`), and -1 for an
  invalid response; confidence is float32,
  0 for an invalid response (consult `valid`, never the placeholder); valid is bool.
  """
  if isinstance(texts, str):
    raise TypeError("parse_batch takes a sequence of responses, got one str; use parse().")
  read = get_parser(parser)
  parsed = [read(t) for t in texts]
  valid_B = np.array([p.valid for p in parsed], dtype=np.bool_)
  letter_idx_B = np.array([OPTION_LETTERS.index(p.letter) if p.valid else -1 for p in parsed],
                          dtype=np.int32)
  confidence_B = np.array([p.confidence if p.valid else 0.0 for p in parsed], dtype=np.float32)
  return letter_idx_B, confidence_B, valid_B
