"""Rewards for the policy's hints, computed from the downstream model's parsed answers.

Every reward is a pure, jittable `(judged, **params) -> reward_B` over a `Judged` batch, chosen
by name from `REWARDS` (the paper's reward first):

- "clinical": the paper's. Invalid -> `invalid_reward` (log 1e-12); correct -> log c; wrong ->
  log(1 - c) - `wrong_penalty`, with c clipped to [`clip_min`, 1] inside the log.
- "log_score": the same without the wrong-answer penalty (a strictly proper score).
- "brier": -(c - correct)^2, `invalid_reward` (-1) for invalid responses.
- "format_only": `valid_reward` (1) for a readable response, `invalid_reward` (0) otherwise.

`combine` (and `RewardSpec`, built by `from_config`) sums weighted terms and applies a safety
veto the ProMedical way (arXiv 2604.08326): a vetoed row gets `floor` instead of
the weighted sum, so a violation cannot be bought back by the other terms. Vetoes look at the
hint text, so they run on the host (`VETOES`) and enter the jitted reward as a bool array.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import inspect
import math
import re
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from prompt4trust_jax.downstream import parsing

LOG_FLOOR = math.log(1e-12)  # the paper's reward for an unreadable response


@struct.dataclass
class Judged:
  """One batch of downstream answers: letter -1 and confidence 0 mark an invalid response."""
  letter_B: jax.Array  # int32, A=0..D=3, -1 when invalid
  confidence_B: jax.Array  # float32 in [0, 1]
  valid_B: jax.Array  # bool
  answer_B: jax.Array  # int32, the correct option

  @property
  def correct_B(self) -> jax.Array:
    return self.valid_B & (self.letter_B == self.answer_B)

  @classmethod
  def from_answers(cls, answers, answer_B) -> "Judged":
    """The downstream's parsed answers (`downstream.Answers`, item-major) against the
    correct options `answer_B` (one per response)."""
    return cls(letter_B=jnp.asarray(answers.letter_index),
               confidence_B=jnp.asarray(answers.confidence), valid_B=jnp.asarray(answers.valid),
               answer_B=jnp.asarray(answer_B))


def judged_from_texts(texts: Sequence[str], answers: Sequence[int | str],
                      parser: str = "paper") -> Judged:
  """Parses downstream responses (host side) against the correct options.

  `answers` are option indices (0-3) or letters ("A".."D"). The arrays are NumPy; jit moves them.
  """
  if len(texts) != len(answers):
    raise ValueError(f"Got {len(texts)} responses but {len(answers)} answers; pass one each.")
  answer_B = np.array([_option_index(a) for a in answers], dtype=np.int32).reshape(-1)
  letter_B, confidence_B, valid_B = parsing.parse_batch(texts, parser)
  return Judged(letter_B, confidence_B, valid_B, answer_B)


def _option_index(answer: int | str) -> int:
  letters = parsing.LETTERS
  if isinstance(answer, str) and answer.strip().upper() in letters:
    return letters.index(answer.strip().upper())
  if not isinstance(answer, str) and int(answer) == answer and 0 <= answer < len(letters):
    return int(answer)
  raise ValueError(f"Answer {answer!r} is not an option; use an index 0-{len(letters) - 1} "
                   f"or a letter in {letters!r}.")


# --- rewards -------------------------------------------------------------------------------


def _log_reward(judged: Judged, clip_min: float, wrong_penalty: float,
                invalid_reward: float) -> jax.Array:
  c_B = jnp.asarray(judged.confidence_B, jnp.float32)
  right_B = jnp.log(jnp.clip(c_B, clip_min, 1.0))
  wrong_B = jnp.log(jnp.clip(1.0 - c_B, clip_min, 1.0)) - wrong_penalty
  reward_B = jnp.where(judged.correct_B, right_B, wrong_B)
  return jnp.where(judged.valid_B, reward_B, invalid_reward).astype(jnp.float32)


def clinical(judged: Judged, clip_min: float = 1e-10, wrong_penalty: float = 1.0,
             invalid_reward: float = LOG_FLOOR) -> jax.Array:
  """The paper's reward: a log score, minus a flat penalty for a wrong answer."""
  return _log_reward(judged, clip_min, wrong_penalty, invalid_reward)


def log_score(judged: Judged, clip_min: float = 1e-10,
              invalid_reward: float = LOG_FLOOR) -> jax.Array:
  """log c if correct, log(1 - c) if wrong: maximised in expectation by the true accuracy."""
  return _log_reward(judged, clip_min, 0.0, invalid_reward)


def brier(judged: Judged, invalid_reward: float = -1.0) -> jax.Array:
  """Negative squared error of the confidence; -1 (the worst Brier value) for invalid rows."""
  c_B = jnp.asarray(judged.confidence_B, jnp.float32)
  reward_B = -jnp.square(c_B - judged.correct_B.astype(jnp.float32))
  return jnp.where(judged.valid_B, reward_B, invalid_reward).astype(jnp.float32)


def format_only(judged: Judged, valid_reward: float = 1.0,
                invalid_reward: float = 0.0) -> jax.Array:
  """Rewards a readable answer only (for format warm-up or as a small bonus term)."""
  return jnp.where(judged.valid_B, valid_reward, invalid_reward).astype(jnp.float32)


Reward = Callable[..., jax.Array]

REWARDS: dict[str, Reward] = {
    "clinical": clinical,
    "log_score": log_score,
    "brier": brier,
    "format_only": format_only,
}


def get_reward(name: str) -> Reward:
  if name not in REWARDS:
    raise ValueError(f"Unknown reward {name!r}; choose from {sorted(REWARDS)}.")
  return REWARDS[name]


# --- vetoes (host side: they read the hint text) ------------------------------------------


@functools.lru_cache(maxsize=64)
def _leak_pattern(label: str) -> re.Pattern[str]:
  x, cased = re.escape(label), f"(?-i:{re.escape(label.upper())})"
  # A bare lower-case letter followed by a word is English ("the answer is a lesion"), so a
  # bare label must be upper-case unless punctuation or the end of the text follows it.
  bare = rf"(?:{cased}(?![A-Za-z0-9])|{x}(?=\s*(?:[.,;:!?)\]]|$)))"
  named = rf"(?:option|choice|letter)\s+[(\[]?{x}(?![A-Za-z0-9])[)\]]?"
  stated = (rf"\banswer\s*(?:is|would\s+be|should\s+be|must\s+be|:)\s*:?\s*"
            rf"(?:{named}|[(\[]?{bare})")
  asserted = (rf"(?:\b{named}|[(\[]{x}[)\]]|(?<![A-Za-z0-9]){cased})"
              rf"\s+is\s+(?:the\s+)?(?:correct|right)\b")
  return re.compile(f"{stated}|{asserted}", re.IGNORECASE)


def answer_leak(hints: Sequence[str], answers_text: Sequence[str]) -> np.ndarray:
  """Flags hints that state the correct option outright (bool, one per hint).

  `answers_text` holds each question's correct label ("B", or "2" for numbered options). A hint
  leaks when it says "answer is X" / "answer would be X" / "answer: X" (X optionally in () or [],
  or after "option"/"choice"/"letter"), or "option X is correct" / "X is the right answer".
  Words match in any case, and the label stands alone ("answer is Based" is not B). A bare
  lower-case letter counts only before punctuation ("the answer is a lesion" is not A).

  Only the correct label is flagged: the veto removes the reward hack of telling the
  downstream model the answer. A hint that asserts a wrong option breaks the same instruction
  ("Do not give an answer") but gains nothing: the calibration reward already punishes the
  wrong, confident answer it causes. Negations ("option B is not correct") are not leaks.
  """
  if isinstance(hints, str) or isinstance(answers_text, str):
    raise TypeError("answer_leak takes sequences of hints and answers, not one str.")
  if len(hints) != len(answers_text):
    raise ValueError(f"Got {len(hints)} hints but {len(answers_text)} answers; pass one each.")
  leak_B = np.zeros(len(hints), dtype=np.bool_)
  for i, (hint, label) in enumerate(zip(hints, answers_text)):
    if not re.fullmatch(r"\w+", str(label).strip()):
      raise ValueError(f"Answer label {label!r} (row {i}) is not a letter or number like 'B'.")
    leak_B[i] = _leak_pattern(str(label).strip().upper()).search(hint) is not None
  return leak_B


Veto = Callable[[Sequence[str], Sequence[str]], np.ndarray]

VETOES: dict[str, Veto] = {"answer_leak": answer_leak}


def get_veto(name: str) -> Veto:
  if name not in VETOES:
    raise ValueError(f"Unknown veto {name!r}; choose from {sorted(VETOES)}.")
  return VETOES[name]


# --- combining terms ----------------------------------------------------------------------

# (reward name, weight, params): params a mapping or (key, value) pairs.
Term = tuple[str, float, Mapping[str, Any] | tuple[tuple[str, Any], ...]]


def _check_terms(terms: Sequence[Term]) -> None:
  if not terms:
    raise ValueError("No reward terms given; name at least one reward from "
                     f"{sorted(REWARDS)}.")
  names = [name for name, _, _ in terms]
  if len(set(names)) != len(names):
    raise ValueError(f"Reward terms {names} repeat a name; each reward may appear once.")
  for name, _, params in terms:
    fn = get_reward(name)
    try:
      inspect.signature(fn).bind(None, **dict(params))
    except TypeError:
      allowed = list(inspect.signature(fn).parameters)[1:]
      raise ValueError(f"Bad params {dict(params)} for reward {name!r}; it takes {allowed}.")


def combine(judged: Judged, terms: Sequence[Term], veto_B: jax.Array | None = None,
            floor: float = LOG_FLOOR) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of reward terms; rows where `veto_B` is True get `floor` instead.

  Returns `(total_B, per_term)`: per_term maps each reward name to its unweighted per-row
  values, before the veto, so logs show what each dimension scored even on vetoed rows.
  """
  _check_terms(terms)
  per_term = {name: get_reward(name)(judged, **dict(params)) for name, _, params in terms}
  total_B = sum(weight * per_term[name] for name, weight, _ in terms)
  if veto_B is not None:
    total_B = jnp.where(jnp.asarray(veto_B, jnp.bool_), floor, total_B)
  return total_B.astype(jnp.float32), per_term


def summarize(per_term: Mapping[str, jax.Array], total_B: jax.Array,
              veto_B: jax.Array | None = None) -> dict[str, jax.Array]:
  """Scalar metrics: "<name>/mean" and "<name>/std" per term and for "total"; "veto/rate"."""
  metrics = {}
  for name, reward_B in {**per_term, "total": total_B}.items():
    metrics[f"{name}/mean"] = jnp.mean(reward_B)
    metrics[f"{name}/std"] = jnp.std(reward_B)
  if veto_B is not None:
    metrics["veto/rate"] = jnp.mean(jnp.asarray(veto_B, jnp.float32))
  return metrics


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  """A configured reward: weighted terms plus an optional registered veto. Hashable.

  Call it (inside jit if you like) with a `Judged` batch and, when `veto` is set, the bool
  array from `veto_mask` (computed on the host from the hints).
  """
  terms: tuple[tuple[str, float, tuple[tuple[str, Any], ...]], ...]
  veto: str | None = None
  floor: float = LOG_FLOOR

  def __post_init__(self):
    terms = tuple((name, float(weight), tuple(sorted(dict(params).items())))
                  for name, weight, params in self.terms)
    _check_terms(terms)
    if self.veto is not None:
      get_veto(self.veto)
    object.__setattr__(self, "terms", terms)

  def __call__(self, judged: Judged,
               veto_B: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    if self.veto is not None and veto_B is None:
      raise ValueError(f"This reward vetoes with {self.veto!r}; pass "
                       "veto_B=spec.veto_mask(hints, answers_text).")
    return combine(judged, self.terms, veto_B, self.floor)

  def veto_mask(self, hints: Sequence[str], answers_text: Sequence[str]) -> np.ndarray:
    """The host-side veto for these hints; all False when no veto is configured."""
    if self.veto is None:
      return np.zeros(len(hints), dtype=np.bool_)
    return get_veto(self.veto)(hints, answers_text)


_CONFIG_KEYS = {"name", "params", "terms", "veto", "floor"}
_TERM_KEYS = {"name", "weight", "params"}


def _plain(section: Any) -> dict[str, Any]:
  return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def from_config(cfg: Any) -> RewardSpec:
  """A `RewardSpec` from an ml_collections ConfigDict (or a dict).

  Either one reward, `name="clinical"` with optional `params={...}`, or several,
  `terms=[dict(name="clinical", weight=1.0, params={...}), dict(name="format_only", weight=0.1)]`;
  plus optional `veto="answer_leak"` and `floor` (default log 1e-12).
  """
  cfg = _plain(cfg)
  unknown = set(cfg) - _CONFIG_KEYS
  if unknown:
    raise ValueError(f"Unknown reward config keys {sorted(unknown)}; use {sorted(_CONFIG_KEYS)}.")
  if ("name" in cfg) == ("terms" in cfg):
    raise ValueError("A reward config needs exactly one of `name` (one reward) or `terms`.")
  if "name" in cfg:
    raw_terms = [dict(name=cfg["name"], params=cfg.get("params") or {})]
  elif "params" in cfg:
    raise ValueError("Top-level `params` goes with `name`; give each of `terms` its own params.")
  else:
    raw_terms = [_plain(t) for t in cfg["terms"]]
  terms = []
  for term in raw_terms:
    if set(term) - _TERM_KEYS or "name" not in term:
      raise ValueError(f"Reward term {term} needs `name` and may have only {sorted(_TERM_KEYS)}.")
    terms.append((term["name"], term.get("weight", 1.0), _plain(term.get("params") or {})))
  return RewardSpec(tuple(terms), veto=cfg.get("veto"), floor=cfg.get("floor", LOG_FLOOR))
