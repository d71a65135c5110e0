"""Confidence methods by name, grouped in families (one module each under `methods/`).

Work is split into *runs* (passes of the downstream over a split: what it is asked, with
which hint, how many samples, on which inputs) and *methods* (how a confidence is read
from runs). A `Family` declares the runs its methods need and scores them; the harness
(`harness.py`) plans the runs of every requested method once, answers and stores them, and
asks each method's family for its scores. A family may also change how its own runs are
asked (`elicitation`), what the downstream sees (`inputs`) and how it answers (`answer`).
Adding a baseline is one new module under `methods/` that registers its family.
"""

import dataclasses
from typing import Any

import numpy as np

from prompt4trust_jax.downstream import answerer as downstream


@dataclasses.dataclass(frozen=True)
class Run:
  """One pass of the downstream over a split: its inputs, hints and how it answers."""
  name: str
  family: str = "direct"  # whose hooks prepare the pass (`FAMILIES`); "direct": a plain pass
  hint: str = "none"  # "none", "fixed" or "policy"
  samples: int = 1
  sampling: bool = False  # the baselines' sampling settings instead of the evaluation's
  mode: str | None = None  # None: the configured elicitation mode
  split: str = "test"  # "test" or "val"
  corruption: str | None = None  # "name:severity" (`noise.CORRUPTIONS`)


@dataclasses.dataclass(frozen=True)
class Scored:
  """A method's reading of the test split: per item, the letter, confidence and validity
  (`[B]` each), and any metrics of its own (merged into its results)."""
  letter_B: np.ndarray
  confidence_B: np.ndarray
  valid_B: np.ndarray
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Stored:
  """What scoring sees: the config, every run's store (`run_store.RunStore`) by name, and
  the splits' examples (`"test"`, and `"val"` where a run or family reads it)."""
  config: Any
  stores: dict
  splits: dict[str, list[dict]]

  @property
  def test(self) -> list[dict]:
    return self.splits["test"]

  def first_answers(self, run: str) -> Scored:
    """The letter, confidence and validity of each test item's first sample of `run`."""
    return Scored(*self.stores[run].first_answers(self.test))


class Family:
  """A family of confidence methods: the runs they need and how they are scored.

  The hooks have plain defaults (a pass as configured, the examples as they are); a
  family overrides those its runs need. `ctx` is the harness's `Context` (config, the
  downstream, the policy, the splits, and `memo` for what a family makes once).
  """
  methods: tuple[str, ...] = ()  # the names it reports, in the order they are listed
  noise_methods: tuple[str, ...] = ()  # those it can also run on corrupted inputs
  extra_splits: tuple[str, ...] = ()  # splits it reads besides its runs' (e.g. "val")

  def runs(self, methods: tuple[str, ...], settings) -> list[Run]:
    """The runs `methods` (some of `self.methods`) need; `settings`: `config.eval`."""
    raise NotImplementedError

  def noise_run(self, method: str, corruption: str) -> Run:
    raise NotImplementedError(f"{method} does not run under input noise.")

  def needs_policy(self, run: Run, config) -> bool:
    return run.hint == "policy"

  def elicitation(self, ctx, run: Run) -> dict[str, Any]:
    """`ElicitationConfig` fields this family's run sets beyond the harness's."""
    return {}

  def inputs(self, ctx, run: Run, batch: list[dict]) -> list[dict]:
    """The examples as the downstream sees them (after any corruption)."""
    return batch

  def answer(self, ctx, run: Run, answerer: downstream.Downstream, batch: list[dict],
             hints: list[str | None], key):
    """The downstream's answers to `batch`, `run.samples` per item."""
    items = [downstream.Item.from_example(x) for x in batch]
    return answerer.answer(items, [[h] * run.samples for h in hints], key)

  def score(self, method: str, stored: Stored) -> Scored:
    raise NotImplementedError


FAMILIES: dict[str, Family] = {}


def register(name: str):
  """Class decorator: registers one instance of the family under `name`."""
  def add(cls):
    if name in FAMILIES:
      raise ValueError(f"A method family {name!r} is already registered.")
    for kind in ("methods", "noise_methods"):
      clash = set(getattr(cls, kind)) & {m for f in FAMILIES.values() for m in getattr(f, kind)}
      if clash:
        raise ValueError(f"Methods {sorted(clash)} are already registered.")
    FAMILIES[name] = cls()
    return cls
  return add


def methods() -> tuple[str, ...]:
  """Every registered method, in registration order."""
  return tuple(m for f in FAMILIES.values() for m in f.methods)


def noise_methods() -> tuple[str, ...]:
  return tuple(m for f in FAMILIES.values() for m in f.noise_methods)


def family_of(method: str) -> Family:
  """The family that reports `method` (a name of `methods()` or `noise_methods()`)."""
  for family in FAMILIES.values():
    if method in family.methods or method in family.noise_methods:
      return family
  raise ValueError(f"Unknown evaluation method {method!r}; choose from {methods()} (and "
                   f"{noise_methods()} under noise).")
