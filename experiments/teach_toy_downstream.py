"""Teaches the toy world's downstream (`toy_world`) and writes its checkpoint.

  python -m experiments.teach_toy_downstream            # rewrites the committed checkpoint

A tiny random Qwen2-VL (the fixtures' "tiny" shape over the toy world's tokenizer) learns, by
supervised next-token training through the library (`training.supervised`), to answer the
toy world's questions in the structured answer format from the image, with the confidence
`toy_world.taught_confidence` gives its hint: prompts are the ones `Downstream` builds, with
hints drawn like a policy's (`toy_world.random_hint`) or none. It then answers held-out
questions through `Downstream` and the figures (accuracy per kind, stated confidence after
neutral, hedging and assertive hints) go to `teaching.json` beside the weights.
"""

import json
import os
import time

import numpy as np
import optax
from absl import app, flags
from flax import nnx
from PIL import Image

from prompt4trust_jax import fixtures, prompts, toy_world
from prompt4trust_jax.downstream import answerer
from prompt4trust_jax.models import checkpoint, qwen2_vl, qwen2_vl_images
from prompt4trust_jax.training import supervised, update

HINT_TOKENS = 24  # the demo policy's max_new_tokens


def _items(questions):
  return [answerer.Item(q.question, q.choices, Image.fromarray(q.pixels).convert("RGB"))
          for q in questions]


def teach(out: str, steps: int = 1500, batch: int = 32, learning_rate: float = 3e-3,
          seed: int = 0, num_questions: int = 2048, eval_questions: int = 96,
          log_every: int = 100) -> dict:
  """Teaches a fresh tiny Qwen2-VL, writes it to `out` (hub layout) and returns the figures."""
  os.makedirs(out, exist_ok=True)
  tokenizer = fixtures.write_tokenizer(out, 1024, toy_world.corpus())
  config = fixtures.vl_shape_config("tiny", vocab_size=len(tokenizer))
  model = qwen2_vl.Qwen2VLForConditionalGeneration(config, rngs=nnx.Rngs(seed))
  processor = qwen2_vl_images.processor(qwen2_vl_images.ImageConfig(max_pixels=224 * 224))
  downstream = answerer.Downstream(model, tokenizer, processor,
                                   answerer.ElicitationConfig(preset="clean", temperature=0.0))
  hint_tokens = toy_world.HintTokens.of(tokenizer)
  eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
  pool = toy_world.items(num_questions, seed=1 + seed)
  items = _items(pool)
  images = downstream.preprocess_images(items)
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, steps // 20, steps)
  state = update.TrainState.create(model, update.optimizer(schedule, max_grad_norm=1.0))
  rng = np.random.default_rng([seed, 3])
  start, losses = time.time(), []
  for step in range(steps):
    rows = rng.integers(len(items), size=batch)
    hints = [None if rng.random() < 0.1 else toy_world.random_hint(rng, hint_tokens, HINT_TOKENS)
             for _ in rows]
    prompt_ids = [downstream.prompt_ids(items[i], h, images[i][1]) for i, h in zip(rows, hints)]
    replies = [tokenizer.encode(prompts.ANSWER_FORMAT.format(
        LETTER=pool[i].letter, CONFIDENCE=toy_world.taught_confidence(h)),
        add_special_tokens=False) + [eos] for i, h in zip(rows, hints)]
    b = supervised.make_batch(model, prompt_ids, replies, tokenizer.pad_token_id,
                              [images[i] for i in rows])
    state, metrics = supervised.train_step(state, b)
    losses.append(float(metrics["loss"]))
    if log_every and (step + 1) % log_every == 0:
      print(f"step {step + 1}/{steps}  loss {np.mean(losses[-log_every:]):.4f}  "
            f"{time.time() - start:.0f} s", flush=True)
  taught = state.model()
  checkpoint.export_hf(taught, out)
  fixtures.write_special_token_ids(out, tokenizer)
  processor.save_pretrained(out)
  figures = {"steps": steps, "batch": batch, "learning_rate": learning_rate, "seed": seed,
             "num_questions": num_questions, "seconds": round(time.time() - start, 1),
             "final_loss": float(np.mean(losses[-max(1, steps // 10):])),
             **measure(answerer.Downstream(taught, tokenizer, processor, downstream.config),
                         eval_questions, seed)}
  with open(os.path.join(out, "teaching.json"), "w") as f:
    json.dump(figures, f, indent=1)
  return figures


def measure(downstream: answerer.Downstream, n: int, seed: int = 0) -> dict:
  """Accuracy per kind (no hint) and the mean stated confidence after no hint and after
  neutral, hedging and assertive random hints, on `n` held-out questions."""
  questions = toy_world.items(n, seed=1000 + seed)
  items = _items(questions)
  tokens = toy_world.HintTokens.of(downstream.tokenizer)
  rng = np.random.default_rng([seed, 4])
  soups = {
      "neutral": [tokens.tokenizer.decode(rng.choice(tokens.plain_ids, HINT_TOKENS).tolist(),
                                          skip_special_tokens=True).strip() for _ in items],
      "hedging": [" ".join(rng.choice(toy_world.HEDGES, 3)) for _ in items],
      "assertive": [" ".join(rng.choice(toy_world.ASSERTIONS, 3)) for _ in items]}
  answers = downstream.answer(items)
  correct = np.array(answers.letters()) == np.array([q.letter for q in questions])
  kinds = np.array([q.kind for q in questions])
  out = {f"accuracy/{k}": float(correct[kinds == k].mean()) for k in toy_world.KINDS}
  out["confidence/no_hint"] = float(answers.confidence.mean())
  for name, hints in soups.items():
    stated = downstream.answer(items, [[h] for h in hints]).confidence
    taught = np.array([toy_world.taught_confidence(h) for h in hints]) / 100
    out[f"confidence/{name}"] = float(stated.mean())
    out[f"confidence_error/{name}"] = float(np.abs(stated - taught).mean())
  return out


_OUT = flags.DEFINE_string("out", toy_world.DOWNSTREAM_DIR, "Checkpoint directory to write.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Optimizer steps.")
_BATCH = flags.DEFINE_integer("batch", 32, "Prompts per step.")
_LR = flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate (warmup, cosine decay).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights, questions and hints.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  figures = teach(_OUT.value, _STEPS.value, _BATCH.value, _LR.value, _SEED.value)
  print(json.dumps(figures, indent=1))


if __name__ == "__main__":
  app.run(main)
