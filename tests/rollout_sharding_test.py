"""Data-parallel rollouts: the same hints, answers, log-probs and losses on one device and on
8 (data=2, fsdp=2, tensor=2), each stage's rows split over the batch axes."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import demo
from prompt4trust_jax import fixtures, sharding
from prompt4trust_jax.downstream import answerer as downstream
from prompt4trust_jax.models import vision
from prompt4trust_jax.policy import sampling
from prompt4trust_jax.training import train, update

ROWS = P(sharding.BATCH_AXES)  # rows split over data x fsdp


def _config(**sampling_overrides):
  config = demo.get_config("smoke")
  config.data.questions_per_step = 4  # 4 questions x 4 hints: 2 rows per device
  config.sampling.update(max_new_tokens=10, **sampling_overrides)
  return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("rollout_sharding"))
  return workdir, fixtures.with_demo_inputs(_config(), workdir)


def _one_step(config, workdir, mesh):
  job = train.setup(config, workdir, mesh)
  batch, info = job.rollout(job.state, next(job.batches), jax.random.key(3))
  _, metrics = job.step_fn(job.state, batch)
  return batch, info, jax.device_get(metrics)


def test_rollout_and_update_equal_on_one_and_eight_devices(workdir):
  workdir, made = workdir
  config = _config()
  config.policy.path, config.downstream.path = made.policy.path, made.downstream.path
  one = _one_step(config, workdir, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  eight = _one_step(config, workdir, sharding.make_mesh(data=2, fsdp=2, tensor=2))
  (batch1, info1, metrics1), (batch8, info8, metrics8) = one, eight
  np.testing.assert_array_equal(batch1.tokens_BxL, batch8.tokens_BxL)  # the same hints
  np.testing.assert_array_equal(batch1.completion_mask_BxN, batch8.completion_mask_BxN)
  for field in ("old_logp_BxN", "ref_logp_BxN", "advantages_B"):
    np.testing.assert_allclose(getattr(batch1, field), getattr(batch8, field), atol=1e-5,
                               err_msg=field)
  assert info1.keys() == info8.keys()
  for key in info1:  # rewards, the downstream's accuracy and calibration
    np.testing.assert_allclose(info1[key], info8[key], atol=1e-5, err_msg=key)
  for key in ("loss", "grad_norm", "kl"):
    np.testing.assert_allclose(metrics1[key], metrics8[key], atol=1e-5, err_msg=key)
  # The update batch leaves the rollout split over the batch axes.
  for x in jax.tree.leaves(batch8):
    assert x.sharding.spec == ROWS, x.sharding


def test_each_stage_keeps_its_rows_split(workdir, monkeypatch):
  """Inside one rollout on data=2, fsdp=2, tensor=2: the policy samples from weights without
  fsdp shards; its outputs, the vision tower's activations, the downstream's decode state
  (cache included) and the reference log-probs are split over data x fsdp."""
  workdir, made = workdir
  job = train.setup(made, workdir, sharding.make_mesh(data=2, fsdp=2, tensor=2))
  seen = {}

  def spy(module, name, record):
    original = getattr(module, name)
    def wrapped(*args, **kwargs):
      out = original(*args, **kwargs)
      record(out)
      return out
    monkeypatch.setattr(module, name, wrapped)

  spy(sampling, "generate_padded", lambda out: seen.setdefault("policy", out))
  spy(update, "reference_logprobs", lambda out: seen.setdefault("reference", out))
  spy(downstream.Downstream, "_finish", lambda out: seen.setdefault("downstream", out))
  vision_specs, in_tower = [], []  # the tower's activations' shardings, as compiled
  spy(vision.layers, "batch_constraint", lambda out: in_tower and jax.debug.inspect_array_sharding(
      out, callback=lambda s: vision_specs.append(s.spec)))
  tower = vision.VisionTransformer.__call__
  def traced_tower(*args):
    in_tower.append(True)
    try:
      return tower(*args)
    finally:
      in_tower.clear()
  monkeypatch.setattr(vision.VisionTransformer, "__call__", traced_tower)
  jax.clear_caches()  # trace the tower again (an earlier test may have compiled it)
  sampler = job.rollout._sampler(job.state)
  job.rollout(job.state, next(job.batches), jax.random.key(0))

  specs = {sharding.dotted_path(path): x.sharding.spec
           for path, x in jax.tree_util.tree_flatten_with_path(nnx.state(sampler))[0]}
  assert all("fsdp" not in jax.tree.leaves(tuple(spec)) for spec in specs.values()), specs
  assert specs["model.layers.0.mlp.up_proj.kernel"] == P(None, "tensor")
  tokens_BxN, logprobs_BxN, lengths_B = seen["policy"]
  assert tokens_BxN.sharding.spec == logprobs_BxN.sharding.spec == ROWS
  assert lengths_B.sharding.spec == ROWS
  state = seen["downstream"]
  for x in (state.tokens_BxN, state.choice_probs_BxC, state.done_B, state.cache[0].k):
    assert x.sharding.spec[0] == sharding.BATCH_AXES, x.sharding
  assert seen["reference"].sharding.spec == ROWS
  # Pixels and every block's output [I, J, W]; the attention's per-step [I / D, D, ...] inputs.
  assert len(vision_specs) > 2 and all(
      sharding.BATCH_AXES in tuple(spec)[:2] for spec in vision_specs), vision_specs
