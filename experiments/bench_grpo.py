"""Full GRPO steps on a random policy: sample, reward, reference log-probs, update.

  python -m experiments.bench_grpo --shape=small --prompts=2 --group=8 --completion=64 --compare_trl

Sampling at temperature 0.6 / top_p 0.95 / top_k 100 with EOS disabled (every completion
has `completion` tokens), a cheap Python reward (the share of even token ids), beta 0.04,
mu 1, AdamW. The first (compiling) step is excluded. `completions_per_s=` comes last;
`--compare_trl` runs TRL's GRPOTrainer on the same shape and settings on this machine.
"""

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from experiments import timing
from prompt4trust_jax import fixtures, models, padding
from prompt4trust_jax.policy import sampling
from prompt4trust_jax.training import grpo, update

_SHAPE = flags.DEFINE_enum("shape", "small", ["tiny", "small"], "Policy shape.")
_PROMPTS = flags.DEFINE_integer("prompts", 2, "Prompts per step.")
_GROUP = flags.DEFINE_integer("group", 8, "Completions per prompt (G).")
_COMPLETION = flags.DEFINE_integer("completion", 64, "Tokens per completion.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 32, "Tokens per prompt.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps.")
_COMPARE_TRL = flags.DEFINE_bool("compare_trl", False, "Also time TRL's GRPOTrainer.")

SAMPLING = dict(temperature=0.6, top_p=0.95, top_k=100)
BETA = 0.04


def reward_fn(tokens_BxN: np.ndarray) -> np.ndarray:
  return (tokens_BxN % 2 == 0).mean(-1).astype(np.float32)


def _ours(config, prompts) -> float:
  policy = models.Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))
  graphdef, reference = nnx.split(policy)
  reference = jax.tree.map(jnp.copy, reference)
  state = update.TrainState.create(policy, update.optimizer(1e-6))
  loss_config = grpo.LossConfig(beta=BETA, max_completion_length=_COMPLETION.value)
  G, N = _GROUP.value, _COMPLETION.value
  rows = [p for p in prompts for _ in range(G)]
  tokens, mask = padding.left_pad(prompts, len(prompts[0]), len(prompts), 0)

  def step(state, key):
    out = sampling.generate(nnx.merge(state.graphdef, state.params), prompts, max_new_tokens=N,
                            rng=key, copies=G, **SAMPLING)  # as the library's rollout does
    rewards = jnp.asarray(reward_fn(out.tokens_BxN))
    full = np.concatenate([np.repeat(tokens, G, 0), out.tokens_BxN], 1)
    attention = np.ones_like(full)
    batch = update.Batch(tokens_BxL=jnp.asarray(full), attention_mask_BxL=jnp.asarray(attention),
                         completion_mask_BxN=jnp.ones((len(rows), N), jnp.float32),
                         old_logp_BxN=jnp.asarray(out.logprobs_BxN),
                         advantages_B=grpo.advantages(rewards, G))
    batch = batch.replace(ref_logp_BxN=update.reference_logprobs(
        graphdef, reference, batch.tokens_BxL, batch.attention_mask_BxL, N, SAMPLING["temperature"],
        group_size=G))  # each prompt's forward computed once for its G completions
    state, metrics = update.train_step(state, batch, config=loss_config,
                                       temperature=SAMPLING["temperature"], group_size=G)
    jax.block_until_ready(metrics["loss"])
    return state

  keys = jax.random.split(jax.random.key(0), _STEPS.value + 1)
  state = step(state, keys[0])  # compile
  start = time.perf_counter()
  for key in keys[1:]:
    state = step(state, key)
  return len(rows) * _STEPS.value / (time.perf_counter() - start)


def _trl(config, prompts) -> float:
  import datasets  # benchmark-only dependencies
  import torch
  import transformers
  import trl
  workdir = tempfile.mkdtemp()
  tokenizer = fixtures.write_tokenizer(workdir, config.vocab_size)
  # TRL builds its reference model from a path, so the random policy goes to disk first.
  transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
      tie_word_embeddings=True)).save_pretrained(workdir)
  texts = [tokenizer.decode(p) for p in prompts]
  data = datasets.Dataset.from_dict({"prompt": texts * (_STEPS.value + 1)})

  def reward(completion_ids, **kwargs):
    return [float(np.mean(np.asarray(c) % 2 == 0)) for c in completion_ids]

  args = trl.GRPOConfig(
      output_dir=workdir, per_device_train_batch_size=len(prompts) * _GROUP.value,
      num_generations=_GROUP.value, max_completion_length=_COMPLETION.value, beta=BETA,
      num_iterations=1, learning_rate=1e-6, max_steps=_STEPS.value + 1, report_to="none",
      logging_steps=1, save_strategy="no", use_cpu=True, bf16=False,
      generation_kwargs={"min_new_tokens": _COMPLETION.value}, **SAMPLING)
  times = []

  class Timer(transformers.TrainerCallback):
    def on_step_begin(self, *a, **k):
      times.append(time.perf_counter())

    def on_train_end(self, *a, **k):
      times.append(time.perf_counter())

  trainer = trl.GRPOTrainer(model=workdir, reward_funcs=reward, args=args, train_dataset=data,
                            processing_class=tokenizer, callbacks=[Timer()])
  torch.manual_seed(0)
  trainer.train()
  lengths = [h["completions/mean_length"] for h in trainer.state.log_history
             if "completions/mean_length" in h]
  assert lengths and min(lengths) == _COMPLETION.value, f"TRL completion lengths {lengths}"
  return len(prompts) * _GROUP.value * _STEPS.value / (times[-1] - times[1])


def main(argv):
  del argv
  timing.setup_host()
  config = fixtures.shape_config(_SHAPE.value)
  rng = np.random.default_rng(0)
  prompts = rng.integers(10, 200, (_PROMPTS.value, _PROMPT_LEN.value)).tolist()
  ours = _ours(config, prompts)
  print(f"device={jax.devices()[0].device_kind} shape={_SHAPE.value} prompts={_PROMPTS.value} "
        f"group={_GROUP.value} completion={_COMPLETION.value}")
  if _COMPARE_TRL.value:
    theirs = _trl(config, prompts)
    print(f"trl_completions_per_s={theirs:.2f}")
    print(f"speedup={ours / theirs:.2f}")
  print(f"completions_per_s={ours:.2f}")


if __name__ == "__main__":
  app.run(main)
