"""One GRPO step's data, forward only: prompts -> G hints each -> the downstream's answers ->
rewards -> the update batch.

  rollout = Rollout(config, answerer, tokenizer, eos, reward_spec, kl_reference, preset,
                    letters, sampling_settings, sampling_graphdef, mesh)
  batch, info = rollout(state, examples, key)  # update.Batch, scalar metrics

The policy sees only the question and options (`hints.write`); the sampler returns the
prompts as it padded them, which `update.Batch.from_rollout` lays out with the completions;
the downstream's answers become `rewards.Judged.from_answers`. Sampling keys derive from
`key`: fold 0 for the hints, fold 1 for the answers.

On a mesh every stage is data parallel: the policy samples from a copy of its weights in
the sampling layout (`sharding.sampling_copy`: fsdp shards gathered once per rollout),
and the prompts, decode states, images and outputs of the policy, the downstream and the
reference forward are split over the batch axes (`sharding.using`), so each device
computes its own rows. The update batch leaves laid out as the update takes it.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prompt4trust_jax import calibration, hosts, sharding
from prompt4trust_jax.downstream import answerer as downstream
from prompt4trust_jax.policy import hints
from prompt4trust_jax.training import grpo, rewards, update


class Rollout:
  """Settings that do not change between rollouts, bound once; `__call__` is one rollout.

  `kl_reference` is a `reference.Reference` (beta > 0) or None; `sampling_graphdef` is the
  policy's graph in `policy.sampling_dtype` (`models.graphdef_in`), None to sample in the
  update's own precision.
  """

  def __init__(self, config, answerer, tokenizer, eos, reward_spec, kl_reference, preset,
               letters, sampling_settings, sampling_graphdef, mesh=None):
    self.config, self.answerer, self.tokenizer, self.eos = config, answerer, tokenizer, eos
    self.reward_spec, self.kl_reference, self.preset = reward_spec, kl_reference, preset
    self.letters, self.sampling_settings = letters, sampling_settings
    self.sampling_graphdef, self.mesh = sampling_graphdef, mesh

  def _sampler(self, state) -> nnx.Module:
    """The policy to sample from: its weights in the sampling layout and dtype."""
    graphdef, dtype = state.graphdef, None
    if self.sampling_graphdef is not None:
      graphdef, dtype = self.sampling_graphdef, jnp.dtype(self.config.policy.sampling_dtype)
    return nnx.merge(graphdef, sharding.sampling_copy(state.model_state(), self.mesh, dtype))

  def __call__(self, state, examples, key) -> tuple[update.Batch, dict[str, float]]:
    with sharding.using(self.mesh):
      return self._rollout(state, examples, key)

  def judge(self, state, examples, key) -> dict[str, np.ndarray]:
    """A rollout's answers without its update batch: per completion (every host's rows),
    `confidence_B`, `valid_B`, `correct_B` and the total `reward_B` (the held-out evaluation:
    the policy's hints, sampled as in training, and what they do to the downstream)."""
    with sharding.using(self.mesh):
      _, judged, total_B, _, _ = self._answered(state, examples, key)
    return {"confidence_B": hosts.all_rows(judged.confidence_B),
            "valid_B": hosts.all_rows(judged.valid_B),
            "correct_B": hosts.all_rows(judged.correct_B), "reward_B": hosts.all_rows(total_B)}

  def _answered(self, state, examples, key):
    """`(hints written, judged answers, total_B, per-term rewards, veto_B)` of one rollout."""
    config, G = self.config, self.config.sampling.num_generations
    written = hints.write(
        self._sampler(state), self.tokenizer, self.eos, examples, preset=self.preset,
        num_per_prompt=G, max_new_tokens=config.sampling.max_new_tokens,
        rng=jax.random.fold_in(key, 0), **self.sampling_settings)
    items = [downstream.Item.from_example(e) for e in examples]
    answers = self.answerer.answer(items, hints.group(written.texts, G),
                                   jax.random.fold_in(key, 1))
    answer_B = np.repeat([e["answer"] for e in examples], G).astype(np.int32)
    judged = rewards.Judged.from_answers(answers, answer_B)
    veto_B = None
    if self.reward_spec.veto:
      veto_B = jnp.asarray(self.reward_spec.veto_mask(written.texts,
                                                      [self.letters[a] for a in answer_B]))
    total_B, per_term = self.reward_spec(judged, veto_B)
    return written, judged, total_B, per_term, veto_B

  def _rollout(self, state, examples, key) -> tuple[update.Batch, dict[str, float]]:
    config, G = self.config, self.config.sampling.num_generations
    written, judged, total_B, per_term, veto_B = self._answered(state, examples, key)
    info = _metrics(per_term, total_B, veto_B, judged, written.output.lengths_B)

    batch = update.Batch.from_rollout(written.output, G,
                                      grpo.advantages(total_B, G, config.grpo.advantage))
    if hosts.multiple():  # each host's rows are its block of the global batch
      batch = hosts.global_rows(jax.tree.map(np.asarray, batch))
    elif self.mesh is not None:  # the update's layout, which the forwards below keep
      batch = jax.device_put(batch, sharding.batch_sharding(self.mesh))
    N = written.output.tokens_BxN.shape[1]
    forward = dict(temperature=self.sampling_settings["temperature"], group_size=G,
                   logprob_chunk=config.grpo.get("logprob_chunk"))
    if self.sampling_graphdef is not None:
      # Sampled in another precision: the ratio's "old" log-probs are the update's own
      # forward at generation time, as TRL computes them.
      batch = batch.replace(old_logp_BxN=update.reference_logprobs(
          state.graphdef, state.model_state(), batch.tokens_BxL, batch.attention_mask_BxL, N,
          **forward))
    if self.kl_reference is not None:
      batch = batch.replace(ref_logp_BxN=self.kl_reference.logprobs(
          batch.tokens_BxL, batch.attention_mask_BxL, N, state=state, **forward))
    return batch, info


def _metrics(per_term, total_B, veto_B, judged, hint_lengths_B) -> dict[str, float]:
  """The rollout's scalar metrics over every host's rows (`hosts.all_rows`), so each host
  logs what one host holding the whole global batch would."""
  rows = hosts.all_rows
  total_B, veto_B = rows(total_B), None if veto_B is None else rows(veto_B)
  per_term = {name: rows(reward_B) for name, reward_B in per_term.items()}
  info = {f"reward/{k}": float(v)
          for k, v in rewards.summarize(per_term, total_B, veto_B).items()}
  info.update({f"downstream/{k}": float(v) for k, v in calibration.summary(
      rows(judged.confidence_B), rows(judged.valid_B), rows(judged.correct_B)).items()})
  info["hint_length/mean"] = float(rows(hint_lengths_B).mean())
  return info
