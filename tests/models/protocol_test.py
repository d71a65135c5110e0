"""The model-family seam: every family's model is a `protocol.DecoderModel`, the multimodal
ones a `MultimodalModel`, and the registry gives each family's image processing."""

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from prompt4trust_jax import fixtures
from prompt4trust_jax.models import families, protocol, qwen2, qwen2_vl


def _model(model_type):
  config = (fixtures.shape_config("tiny") if model_type == "qwen2" else
            fixtures.vl_shape_config("tiny", qwen2_5=model_type == "qwen2_5_vl"))
  return nnx.eval_shape(lambda: families.FAMILIES[model_type].model_cls(config, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("model_type", sorted(families.FAMILIES))
def test_every_familys_model_satisfies_the_protocol(model_type):
  model, family = _model(model_type), families.FAMILIES[model_type]
  assert isinstance(model, protocol.DecoderModel)
  assert families.of(model).model_cls is family.model_cls
  # A family takes images exactly when its model does, and then has an image processor.
  assert isinstance(model, protocol.MultimodalModel) == (family.images is not None)
  if family.images is not None:
    for name in ("processor_from_pretrained", "preprocess"):
      assert callable(getattr(family.images, name)), name


def test_positions_are_the_models():
  mask_BxT = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
  want = [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
  for model_type in ("qwen2", "qwen2_vl"):
    np.testing.assert_array_equal(_model(model_type).positions(mask_BxT), want)
  np.testing.assert_array_equal(qwen2.positions_from_mask(mask_BxT), want)


def test_the_registry_gives_qwen2_vl_its_image_processor_and_expansion(tmp_path):
  path = fixtures.write_random_qwen2_vl(str(tmp_path), fixtures.vl_shape_config("tiny"))
  images = families.get("qwen2_vl", path).images
  processor = images.processor_from_pretrained(path, None, 56 * 56)
  pixels_PxD, grid_Ix3 = images.preprocess([Image.new("RGB", (112, 56))], processor)
  assert grid_Ix3.tolist() == [[1, 2, 4]] and len(pixels_PxD) == 8  # within 56x56 px
  model = _model("qwen2_vl")
  pad = model.image_token_id
  ids = model.expand_image_placeholders([7, pad, 8], grid_Ix3)
  assert ids == [7] + [pad] * 2 + [8]  # 8 patches, merged 2x2
  with pytest.raises(ValueError, match="2 image placeholders"):
    model.expand_image_placeholders([pad, pad], grid_Ix3)
  with pytest.raises(ValueError, match="not divisible by merge_size=2"):
    qwen2_vl.image_token_counts([[1, 3, 4]], 2)
  assert families.get("qwen2", path).images is None


def test_an_unregistered_model_is_named():
  with pytest.raises(ValueError, match="object is no registered family's model"):
    families.of(object())
