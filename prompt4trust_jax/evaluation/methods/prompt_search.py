"""Iterative search over the downstream's instruction (Chen et al., arXiv 2412.14660).

An LLM (the policy model or any supported one) proposes rewrites of the best instructions
so far for `rounds` rounds; every candidate is scored on a validation split and ranked by
accuracy bucket first (accuracy floored to a multiple of `bucket`, higher is better), then
by the lowest ECE, so calibration decides only between instructions of about the same
accuracy. The `top_k` best are kept as the next round's parents.

`search` takes the proposer and the scorer as plain functions. The `prompt_search` method
wires them to the policy and the downstream on the validation split (`data.val_split`,
settings in `config.prompt_search`), caches every score in the workdir
(`prompt_search.json`: a resumed search never re-scores an instruction), saves the best
instruction for later evaluations (`prompt_search.instruction_file` reuses one, no search)
and answers the test split under it.
"""

import dataclasses
import json
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from prompt4trust_jax import calibration, hosts, prompts, run_files
from prompt4trust_jax.downstream import answerer as downstream
from prompt4trust_jax.evaluation import registry
from prompt4trust_jax.policy import hints

REWRITE_INSTRUCTION = (
    "You improve instructions for a vision-language model that answers medical multiple-choice "
    "questions about images and states a confidence from 0 to 100. The confidence should match "
    "how often the model is right. Below are instructions tried so far with their accuracy and "
    "calibration error (ECE, lower is better). Write one new, improved instruction. It must keep "
    "asking for the answer in exactly this format: '" + prompts.ANSWER_FORMAT + "'. Reply with "
    "the instruction only.")


@dataclasses.dataclass(frozen=True)
class Candidate:
  instruction: str
  accuracy: float
  ece: float
  round: int


def rank_key(accuracy: float, ece: float, bucket: float = 0.05) -> tuple[float, float]:
  """Sort key, smaller is better: (-accuracy bucket, ECE). NaN ECE ranks last in its bucket."""
  return (-math.floor(accuracy / bucket + 1e-9), math.inf if math.isnan(ece) else ece)


def search(propose: Callable[[Sequence[Candidate], int, int], list[str]],
           score: Callable[[str], tuple[float, float]], seed_instructions: Sequence[str], *,
           rounds: int, per_round: int, top_k: int, bucket: float = 0.05) -> list[Candidate]:
  """Every scored candidate, best first.

  `propose(parents, n, round)` returns up to n new instructions written from the parents;
  `score(instruction)` returns (accuracy, ECE) on the validation split. Duplicates and
  empty proposals are dropped, so each instruction is scored once.
  """
  if rounds < 0 or per_round < 1 or top_k < 1 or not seed_instructions:
    raise ValueError("search needs rounds >= 0, per_round >= 1, top_k >= 1 and at least one "
                     "seed instruction.")
  key = lambda c: rank_key(c.accuracy, c.ece, bucket)
  scored: dict[str, Candidate] = {}

  def add(instructions, round_index):
    for text in instructions:
      text = text.strip()
      if text and text not in scored:
        scored[text] = Candidate(text, *score(text), round_index)

  add(seed_instructions, 0)
  for round_index in range(1, rounds + 1):
    parents = sorted(scored.values(), key=key)[:top_k]
    add(propose(parents, per_round, round_index), round_index)
  return sorted(scored.values(), key=key)


def meta_prompt(parents: Sequence[Candidate]) -> str:
  """The rewriter's user turn: the task, then the parents with their scores."""
  tried = "\n\n".join(f"Instruction (accuracy {c.accuracy:.3f}, ECE {c.ece:.3f}):\n"
                      f"{c.instruction}" for c in parents)
  return f"{REWRITE_INSTRUCTION}\n\n{tried}\n\nNew instruction:"


def llm_proposer(model: nnx.Module, tokenizer, eos_token_ids: Sequence[int], *, seed: int,
                 max_new_tokens: int = 256, temperature: float = 0.8, top_p: float = 0.95):
  """`propose` for `search`: n sampled rewrites from one meta-prompt per round."""

  def propose(parents: Sequence[Candidate], n: int, round_index: int) -> list[str]:
    return hints.complete(model, tokenizer, eos_token_ids, [meta_prompt(parents)],
                          num_per_prompt=n, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p,
                          rng=jax.random.fold_in(jax.random.key(seed), round_index)).texts

  return propose


@registry.register("prompt_search")
class PromptSearch(registry.Family):
  methods = ("prompt_search",)
  extra_splits = ("val",)  # the search scores its candidates there

  def runs(self, methods, settings):
    return [registry.Run("prompt_search", family="prompt_search")]

  def needs_policy(self, run, config):
    return not config.prompt_search.get("instruction_file")

  def elicitation(self, ctx, run):
    return {"instruction": ctx.memo("searched_instruction", lambda: searched_instruction(ctx))}

  def score(self, method, stored):
    return stored.first_answers(method)


def searched_instruction(ctx) -> str:
  """The best instruction of a search on the validation split (cached in the workdir)."""
  c = ctx.config.prompt_search
  if c.get("instruction_file"):
    with open(c.instruction_file) as f:
      return json.load(f)["best"]
  path = run_files.path(ctx.workdir, "prompt_search.json")
  cache = {}
  if path.exists():
    cache = {x["instruction"]: x for x in json.loads(path.read_text())["candidates"]}
  examples = ctx.splits["val"][:c.num_examples or None]
  base = ctx.elicitation(registry.Run("prompt_search"))  # as configured, before the search

  def score(instruction: str) -> tuple[float, float]:
    if instruction not in cache:
      answerer = ctx.answerer.with_config(dataclasses.replace(base, instruction=instruction))
      items = [downstream.Item.from_example(x) for x in examples]
      out = answerer.answer(items, None, jax.random.key(ctx.config.seed))
      gold = np.asarray([x["answer"] for x in examples])
      m = calibration.summary(jnp.asarray(out.confidence), jnp.asarray(out.valid),
                              jnp.asarray(out.letter_index == gold))
      cache[instruction] = {"instruction": instruction, "accuracy": float(m["accuracy"]),
                            "ece": float(m["ece"])}
      _save(path, cache)
    return cache[instruction]["accuracy"], cache[instruction]["ece"]

  policy = ctx.policy
  proposer = llm_proposer(policy.model, policy.tokenizer, policy.eos, seed=ctx.config.seed,
                          max_new_tokens=c.max_new_tokens, temperature=c.temperature)
  ranked = search(proposer, score, [ctx.config.downstream.get("instruction") or
                                    ctx.preset.downstream_instruction],
                  rounds=c.rounds, per_round=c.per_round, top_k=c.top_k, bucket=c.bucket)
  _save(path, cache, best=ranked[0].instruction)
  logging.info("prompt_search: best of %d candidates (accuracy %.3f, ECE %.3f)", len(ranked),
               ranked[0].accuracy, ranked[0].ece)
  return ranked[0].instruction


def _save(path, cache: dict, best: str | None = None):
  if hosts.is_writer():  # never a half-written cache
    run_files.replace_text(path, json.dumps({"best": best, "candidates": list(cache.values())},
                                            indent=1))
