"""An LLM completing chat prompts: the policy writing hints, and other rewrites it is asked for."""

from collections.abc import Sequence
from typing import NamedTuple

import jax
from flax import nnx

from prompt4trust_jax import prompts
from prompt4trust_jax.models import tokenizer as tokenizer_lib
from prompt4trust_jax.policy import sampling


class Completions(NamedTuple):
  prompt_ids: list[list[int]]  # one per user text
  output: sampling.GenerateOutput  # tokens and log-probs, prompt-major (the GRPO batch's)
  texts: list[str]  # decoded replies (special tokens skipped), not stripped


def complete(model: nnx.Module, tokenizer, eos_token_ids: Sequence[int], user_texts: Sequence[str],
             *, num_per_prompt: int = 1, max_new_tokens: int, temperature: float,
             top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
             rng: jax.Array | None = None) -> Completions:
  """`num_per_prompt` replies to each user turn (in the model's chat template), prompt-major."""
  ids = [tokenizer_lib.chat_prompt_ids(tokenizer, text) for text in user_texts]
  out = sampling.generate(model, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                          eos_token_ids=eos_token_ids, pad_token_id=tokenizer.pad_token_id or 0,
                          rng=rng, copies=num_per_prompt)
  texts = [tokenizer.decode(t, skip_special_tokens=True) for t in out.tokens]
  return Completions(ids, out, texts)


def write(policy: nnx.Module, tokenizer, eos_token_ids: Sequence[int], examples: Sequence[dict],
          *, preset: prompts.Preset, **kwargs) -> Completions:
  """Hints for examples (question and options, never the image), as the preset gives them to
  the downstream (`Preset.hint`); `complete`'s keywords."""
  out = complete(policy, tokenizer, eos_token_ids,
                 [preset.policy(e["question"], e["options"]) for e in examples], **kwargs)
  return out._replace(texts=[preset.hint(t) for t in out.texts])


def group(values: Sequence, size: int) -> list[list]:
  """[a, b, c, d], 2 -> [[a, b], [c, d]] (prompt-major rows back into groups)."""
  return [list(values[i:i + size]) for i in range(0, len(values), size)]
