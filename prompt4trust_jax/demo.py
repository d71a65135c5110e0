"""The embedded demo: the policy writes G hints per question, the downstream answers."""

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from prompt4trust_jax import downstream, fixtures, models, prompts, sampling
from prompt4trust_jax.models import tokenizer as tokenizer_lib


def _checkpoint(section: ml_collections.ConfigDict, workdir: str, seed: int, vision: bool) -> str:
  if section.path:
    return section.path
  out = os.path.join(workdir, f"random_{'qwen2_vl' if vision else 'qwen2'}_{section.random_shape}")
  if not os.path.exists(os.path.join(out, "config.json")):
    if vision:
      fixtures.write_random_qwen2_vl(out, fixtures.vl_shape_config(section.random_shape), seed)
    else:
      fixtures.write_random_qwen2(out, fixtures.shape_config(section.random_shape), seed)
  return out


def _image(source: str, seed: int):
  if source:
    return source
  return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (112, 112, 3), np.uint8))


def run(config: ml_collections.ConfigDict, workdir: str):
  """Samples hints for each question, answers each (question, hint); returns both."""
  path = _checkpoint(config.policy, workdir, config.seed, vision=False)
  model = models.from_pretrained(path, dtype=config.policy.dtype)
  tokenizer = models.load_tokenizer(path)
  s = config.sampling
  prompt_ids = [tokenizer_lib.chat_prompt_ids(tokenizer, prompts.policy_prompt(q["question"],
                                                                               q["options"]))
                for q in config.questions for _ in range(s.num_generations)]
  rng = jax.random.key(config.seed)
  start = time.perf_counter()
  out = sampling.generate(model, prompt_ids, max_new_tokens=s.max_new_tokens,
                          temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                          eos_token_ids=tokenizer_lib.stop_token_ids(tokenizer, path),
                          pad_token_id=tokenizer.pad_token_id or 0, rng=rng)
  logging.info("%d hints, %d tokens in %.2fs (with compilation)", len(prompt_ids),
               int(out.lengths_B.sum()), time.perf_counter() - start)
  g = s.num_generations
  hints = [tokenizer.decode(t, skip_special_tokens=True) for t in out.tokens]
  hints = [hints[i * g:(i + 1) * g] for i in range(len(config.questions))]

  d = config.downstream
  answerer = downstream.Downstream.from_pretrained(
      _checkpoint(d, workdir, config.seed, vision=True),
      downstream.ElicitationConfig(mode=d.mode, temperature=d.temperature, top_p=d.top_p),
      dtype=d.dtype)
  items = [downstream.Item(q["question"], tuple(q["options"]), _image(q["image"], config.seed + i))
           for i, q in enumerate(config.questions)]
  start = time.perf_counter()
  answers = answerer.answer(items, hints, jax.random.fold_in(rng, 1))
  logging.info("%d answers in %.2fs (with compilation)", len(answers.texts),
               time.perf_counter() - start)
  for i, q in enumerate(config.questions):
    print(f"Question: {q['question']}")
    for j, hint in enumerate(hints[i]):
      row = i * g + j
      verdict = (f"{answers.letters()[row]} with confidence {answers.confidence[row]:.2f}"
                 if answers.valid[row] else "invalid")
      print(f"  hint {j}: {hint!r}\n    -> {verdict}")
  return hints, answers
