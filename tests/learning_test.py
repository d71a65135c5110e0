"""GRPO learns from the hint text: the library's rollout-to-update path raises a text reward."""

import jax
import numpy as np
from flax import nnx

from prompt4trust_jax import fixtures, models
from prompt4trust_jax.models import tokenizer as tokenizer_lib
from prompt4trust_jax.policy import hints
from prompt4trust_jax.training import grpo, update

G, STEPS = 8, 24
QUESTIONS = ("Which modality was used?", "What does the lesion show?",
             "Where is the abnormality?", "Which option is correct?")


def _vowel_share(text: str) -> float:
  """The reward: the share of the hint's characters that are vowels (0 for an empty hint)."""
  return sum(c in "aeiou" for c in text) / len(text) if text else 0.0


def test_grpo_raises_a_reward_read_from_the_hint_text(tmp_path):
  tokenizer = fixtures.write_tokenizer(str(tmp_path), 4096)
  # The policy's vocabulary is the tokenizer's: every sampled id decodes to text.
  config = fixtures.shape_config("tiny", vocab_size=len(tokenizer), hidden_size=64,
                                 intermediate_size=128)
  state = update.TrainState.create(models.Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)),
                                   update.optimizer(learning_rate=1e-2))
  eos = tokenizer_lib.stop_token_ids(tokenizer)
  loss_config = grpo.LossConfig(beta=0.0, max_completion_length=12)
  means = []
  for step in range(STEPS):
    written = hints.complete(state.model(), tokenizer, eos, QUESTIONS, num_per_prompt=G,
                             max_new_tokens=12, temperature=1.0, rng=jax.random.key(step))
    reward_B = np.asarray([_vowel_share(t) for t in written.texts], np.float32)
    means.append(float(reward_B.mean()))
    batch = update.Batch.from_rollout(written.output, G, grpo.advantages(reward_B, G))
    state, _ = update.train_step(state, batch, config=loss_config, temperature=1.0)
  before, after = np.mean(means[:4]), np.mean(means[-4:])
  # Stated margin: the mean reward of the last 4 rollouts exceeds the first 4's by 0.2, of a
  # reward in [0, 1] (measured: 0.26 -> 0.60; a random policy's is the vocabulary's vowel share).
  assert after > before + 0.2, np.round(means, 3)


def test_the_demo_policy_samples_only_ids_its_tokenizer_decodes(tmp_path):
  """The demos' random policy has its tokenizer's vocabulary: every id but the special ones
  decodes to text (a 4,096-id policy over this 468-id tokenizer sampled 92% nothing)."""
  from configs import demo
  config = fixtures.with_demo_inputs(demo.get_config("smoke"), str(tmp_path))
  policy = models.from_pretrained(config.policy.path)
  tokenizer = models.load_tokenizer(config.policy.path)
  assert policy.config.vocab_size == len(tokenizer)
  special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
  silent = [i for i in range(policy.config.vocab_size)
            if i not in special and not tokenizer.decode([i], skip_special_tokens=True)]
  assert not silent, silent
