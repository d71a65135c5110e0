"""The embedded demo: the policy writes G hints per question (no downstream yet)."""

import os
import time

import jax
import ml_collections
from absl import logging

from prompt4trust_jax import fixtures, models, prompts, sampling
from prompt4trust_jax.models import tokenizer as tokenizer_lib


def run(config: ml_collections.ConfigDict, workdir: str) -> list[list[str]]:
  """Samples `num_generations` hints for each configured question; returns the texts."""
  path = config.policy.path or fixtures.ensure_random_qwen2(
      os.path.join(workdir, f"random_qwen2_{config.policy.random_shape}"),
      fixtures.shape_config(config.policy.random_shape), seed=config.seed)
  model = models.from_pretrained(path, dtype=config.policy.dtype)
  tokenizer = models.load_tokenizer(path)
  s = config.sampling
  prompt_ids = [tokenizer_lib.chat_prompt_ids(tokenizer, prompts.policy_prompt(q["question"],
                                                                               q["options"]))
                for q in config.questions for _ in range(s.num_generations)]
  kwargs = dict(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                top_k=s.top_k, eos_token_ids=tokenizer_lib.stop_token_ids(tokenizer, path),
                pad_token_id=tokenizer.pad_token_id or 0)
  rng = jax.random.key(config.seed)
  start = time.perf_counter()
  out = sampling.generate(model, prompt_ids, rng=rng, **kwargs)
  first = time.perf_counter() - start
  start = time.perf_counter()
  sampling.generate(model, prompt_ids, rng=rng, **kwargs)
  again = time.perf_counter() - start
  n_tokens = int(out.lengths_B.sum())
  logging.info("%d hints, %d tokens: first call %.2fs (with compilation), second %.3fs "
               "(%.0f tokens/s)", len(prompt_ids), n_tokens, first, again, n_tokens / again)
  hints = [tokenizer.decode(t, skip_special_tokens=True) for t in out.tokens]
  g = s.num_generations
  for i, q in enumerate(config.questions):
    print(f"Question: {q['question']}")
    for j, (hint, logprobs) in enumerate(zip(hints[i * g:(i + 1) * g], out.logprobs[i * g:(i + 1) * g])):
      print(f"  hint {j} ({len(logprobs)} tokens, log p = {logprobs.sum():.1f}): {hint!r}")
  return [hints[i * g:(i + 1) * g] for i in range(len(config.questions))]
