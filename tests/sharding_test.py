"""Partition rules: every matrix of every registered family has a rule of its own."""

import re

import jax
import pytest
from flax import nnx

from prompt4trust_jax import models, sharding
from prompt4trust_jax.models import families

CATCH_ALL = sharding.param_rules()[-1][0]

# A released shape per registered family (a new family adds its own here).
PRESETS = {"qwen2": "qwen2p5_1p5b_instruct", "qwen2_vl": "qwen2_vl_2b_instruct",
           "qwen2_5_vl": "qwen2p5_vl_3b_instruct"}


def test_every_family_is_checked():
  assert sorted(PRESETS) == sorted(families.FAMILIES)


@pytest.mark.parametrize("model_type", sorted(PRESETS))
def test_no_matrix_falls_through_to_the_replicated_default(model_type):
  family = families.FAMILIES[model_type]
  model = nnx.eval_shape(lambda: family.model_cls(getattr(models, PRESETS[model_type])(),
                                                  rngs=nnx.Rngs(0)))
  unruled, assembled = set(), sharding.param_rules()
  for path, x in jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]:
    name = sharding.dotted_path(path)
    if x.ndim < 2:
      continue
    # The family's own rules cover it, and the assembled table places it by the same rule.
    own = next((spec for pattern, spec in family.partition_rules if re.search(pattern, name)),
               None)
    rule, spec = next((p, s) for p, s in assembled if re.search(p, name))
    if own is None or rule == CATCH_ALL:
      unruled.add(re.sub(r"\.\d+\.", ".{i}.", name))
    else:
      assert spec == own, name
  assert not unruled, sorted(unruled)


def test_vision_tower_is_split_over_fsdp():
  mesh = sharding.make_mesh(fsdp=8)
  spec = lambda path, shape: sharding.param_sharding(path, shape, mesh).spec
  assert spec("visual.blocks.0.attn.qkv.kernel", (1280, 3840)) == jax.sharding.PartitionSpec(
      "fsdp", None)
  assert spec("visual.blocks.0.mlp.fc2.kernel", (5120, 1280)) == jax.sharding.PartitionSpec(
      None, "fsdp")
  assert set(spec("visual.patch_embed", (3, 2, 14, 14, 1280))) == {None}  # replicated
