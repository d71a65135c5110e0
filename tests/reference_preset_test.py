"""configs/pmcvqa.py and configs/eval_pmcvqa.py reproduce the original implementation's
batch, schedule, sampling and precision (README "Training"); unset sampling parameters come
from the checkpoints' generation_config.json as vLLM filled them."""

import numpy as np
import pytest

from configs import eval_pmcvqa, pmcvqa
from prompt4trust_jax import run_models
from prompt4trust_jax.downstream import answerer as downstream
from prompt4trust_jax.models import generation_config
from prompt4trust_jax.training import train


def test_batch_and_schedule_are_the_originals():
  c = pmcvqa.get_config()
  # TRL 0.16 on one GPU: per_device_train_batch_size 8 completions = 1 question x 8 hints.
  assert c.data.questions_per_step * c.sampling.num_generations == 8
  assert c.grpo.num_iterations == 4
  rollouts = train.num_rollouts(c.train, c.data.questions_per_step, 5000)  # 3 epochs of train_5k
  assert rollouts == 15_000 and rollouts * c.grpo.num_iterations == 60_000
  lr = train.learning_rate(c.optimizer, 60_000)  # linear 1e-6 -> 0, no warmup (TRL's default)
  # float32 schedule arithmetic at the 1e-6 scale: ~1e-13 absolute.
  np.testing.assert_allclose([lr(0), lr(30_000), lr(59_999), lr(60_000)],
                             [1e-6, 5e-7, 1e-6 / 60_000, 0.0], rtol=0, atol=1e-13)
  assert c.train.checkpoint_every * c.grpo.num_iterations == 200 and c.train.keep_checkpoints == 3
  assert (c.optimizer.weight_decay, c.optimizer.max_grad_norm) == (0.0, 1.0)
  assert (c.grpo.beta, c.grpo.epsilon_low, c.grpo.advantage) == (0.04, 0.2, "group_mean")
  assert (c.sampling.temperature, c.sampling.top_p, c.sampling.top_k,
          c.sampling.repetition_penalty, c.sampling.max_new_tokens) == (0.6, 0.95, 100, 1.0, 512)
  assert (c.policy.dtype, c.policy.sampling_dtype, c.downstream.dtype) == (
      "float32", "bfloat16", "bfloat16")
  assert c.prompts.preset == "reference" and c.data.name == "pmc_vqa/paper"
  assert c.data.split == "train_5k"


def test_schedule_options_are_checked():
  c = pmcvqa.get_config()
  c.train.rollouts = 10
  with pytest.raises(ValueError, match="not both"):
    train.num_rollouts(c.train, 1, 5000)
  c.optimizer.schedule = "cosine"
  with pytest.raises(ValueError, match="'cosine'"):
    train.learning_rate(c.optimizer, 100)
  c.optimizer.update(schedule="linear", warmup_steps=10)
  lr = train.learning_rate(c.optimizer, 110)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60), lr(110)],
                             [0.0, 5e-7, 1e-6, 5e-7, 0.0], rtol=0, atol=1e-13)


def test_unset_sampling_parameters_come_from_generation_config(realistic_policy_dir,
                                                               realistic_vl_dir):
  # The downstream: temperature 0.1, top_p 0.95 and 256 tokens set, as the original's requests
  # set them; top_k and the repetition penalty from Qwen2-VL-2B-Instruct's file (1 and 1.0).
  c = eval_pmcvqa.get_config()
  config = downstream.elicitation_config(c.downstream, realistic_vl_dir, preset="reference")
  assert (config.temperature, config.top_p, config.max_new_tokens) == (0.1, 0.95, 256)
  assert (config.top_k, config.repetition_penalty) == (1, 1.0)
  # The evaluation's policy: greedy, top_p 1; Qwen2.5-1.5B-Instruct's penalty 1.1 and top_k 20.
  assert run_models.policy_sampling(c.policy, realistic_policy_dir) == dict(
      temperature=0.0, top_p=1.0, top_k=20, repetition_penalty=1.1)
  # Training samples with every parameter set (TRL sends them all).
  t = pmcvqa.get_config()
  assert run_models.policy_sampling(t.sampling, realistic_policy_dir) == dict(
      temperature=0.6, top_p=0.95, top_k=100, repetition_penalty=1.0)
  # Without the file, or with "neutral" defaults: no top-k, no penalty.
  assert generation_config.resolve({"top_k": None, "temperature": 0.5}, None) == dict(
      top_k=0, temperature=0.5, top_p=1.0, repetition_penalty=1.0)
  neutral = generation_config.resolve({"top_k": None}, realistic_vl_dir, "neutral")
  assert neutral["top_k"] == 0 and neutral["temperature"] == 1.0
  with pytest.raises(ValueError, match="'vllm'"):
    generation_config.resolve({}, realistic_vl_dir, "vllm")
