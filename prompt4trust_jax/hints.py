"""The policy LLM writing hints: chat prompts from questions, sampled or greedy completions."""

from collections.abc import Sequence

import jax
from flax import nnx

from prompt4trust_jax import prompts, sampling
from prompt4trust_jax.models import tokenizer as tokenizer_lib


def prompt_ids(tokenizer, examples: Sequence[dict],
               instruction: str = prompts.POLICY_INSTRUCTION) -> list[list[int]]:
  """The policy's chat prompt for each example (question and options, never the image)."""
  return [tokenizer_lib.chat_prompt_ids(
      tokenizer, prompts.policy_prompt(e["question"], e["options"], instruction))
          for e in examples]


def write(policy: nnx.Module, tokenizer, eos_token_ids: Sequence[int], examples: Sequence[dict],
          *, num_per_question: int = 1, max_new_tokens: int, temperature: float,
          top_p: float = 1.0, top_k: int = 0, rng: jax.Array | None = None,
          instruction: str = prompts.POLICY_INSTRUCTION
          ) -> tuple[list[list[int]], sampling.GenerateOutput, list[str]]:
  """`num_per_question` hints per example, question-major.

  Returns the prompts (one per example), the sampler's output (tokens and log-probs, the
  GRPO batch is built from them) and the decoded, stripped hints.
  """
  ids = prompt_ids(tokenizer, examples, instruction)
  out = sampling.generate(policy, [p for p in ids for _ in range(num_per_question)],
                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          top_k=top_k, eos_token_ids=eos_token_ids,
                          pad_token_id=tokenizer.pad_token_id or 0, rng=rng)
  texts = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in out.tokens]
  return ids, out, texts


def group(values: Sequence, size: int) -> list[list]:
  """[a, b, c, d], 2 -> [[a, b], [c, d]] (question-major rows back into groups)."""
  return [list(values[i:i + size]) for i in range(0, len(values), size)]

