"""An LLM completing chat prompts: the policy writing hints, and other rewrites it is asked for."""

from collections.abc import Sequence

import jax
from flax import nnx

from prompt4trust_jax import prompts, sampling
from prompt4trust_jax.models import tokenizer as tokenizer_lib


def complete(model: nnx.Module, tokenizer, eos_token_ids: Sequence[int], user_texts: Sequence[str],
             *, num_per_prompt: int = 1, max_new_tokens: int, temperature: float,
             top_p: float = 1.0, top_k: int = 0, rng: jax.Array | None = None
             ) -> tuple[list[list[int]], sampling.GenerateOutput, list[str]]:
  """`num_per_prompt` replies to each user turn (in the model's chat template), prompt-major.

  Returns the prompt ids (one per user text), the sampler's output (tokens and log-probs; the
  GRPO batch is built from them) and the decoded, stripped replies.
  """
  ids = [tokenizer_lib.chat_prompt_ids(tokenizer, text) for text in user_texts]
  out = sampling.generate(model, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_p=top_p, top_k=top_k, eos_token_ids=eos_token_ids,
                          pad_token_id=tokenizer.pad_token_id or 0, rng=rng,
                          copies=num_per_prompt)
  texts = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in out.tokens]
  return ids, out, texts


def write(policy: nnx.Module, tokenizer, eos_token_ids: Sequence[int], examples: Sequence[dict],
          *, instruction: str = prompts.POLICY_INSTRUCTION, **kwargs):
  """Hints for examples (question and options, never the image); `complete`'s keywords."""
  return complete(policy, tokenizer, eos_token_ids,
                  [prompts.policy_prompt(e["question"], e["options"], instruction)
                   for e in examples], **kwargs)


def group(values: Sequence, size: int) -> list[list]:
  """[a, b, c, d], 2 -> [[a, b], [c, d]] (prompt-major rows back into groups)."""
  return [list(values[i:i + size]) for i in range(0, len(values), size)]
