"""Partition rules: every matrix of every supported family has a rule of its own."""

import re

import jax
import pytest
from flax import nnx

from prompt4trust_jax import models, sharding

CATCH_ALL = sharding.PARAM_RULES[-1][0]


@pytest.mark.parametrize("cls, preset", [
    (models.Qwen2ForCausalLM, "qwen2p5_1p5b_instruct"),
    (models.Qwen2VLForConditionalGeneration, "qwen2_vl_2b_instruct"),
    (models.Qwen2VLForConditionalGeneration, "qwen2p5_vl_3b_instruct"),
])
def test_no_matrix_falls_through_to_the_replicated_default(cls, preset):
  model = nnx.eval_shape(lambda: cls(getattr(models, preset)(), rngs=nnx.Rngs(0)))
  unruled = set()
  for path, x in jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]:
    name = sharding.dotted_path(path)
    rule = next(pattern for pattern, _ in sharding.PARAM_RULES if re.search(pattern, name))
    if x.ndim >= 2 and rule == CATCH_ALL:
      unruled.add(re.sub(r"\.\d+\.", ".{i}.", name))
  assert not unruled, sorted(unruled)


def test_vision_tower_is_split_over_fsdp():
  mesh = sharding.make_mesh(fsdp=8)
  spec = lambda path, shape: sharding.param_sharding(path, shape, mesh).spec
  assert spec("visual.blocks.0.attn.qkv.kernel", (1280, 3840)) == jax.sharding.PartitionSpec(
      "fsdp", None)
  assert spec("visual.blocks.0.mlp.fc2.kernel", (5120, 1280)) == jax.sharding.PartitionSpec(
      None, "fsdp")
  assert set(spec("visual.patch_embed", (3, 2, 14, 14, 1280))) == {None}  # replicated
