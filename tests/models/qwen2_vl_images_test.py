"""Qwen2-VL's image processor vs transformers: patches, grids, pixel budgets, saved settings."""

import json

import numpy as np
import pytest
import transformers
from PIL import Image

from prompt4trust_jax.downstream import images
from prompt4trust_jax.models import qwen2_vl
from prompt4trust_jax.models import qwen2_vl_images as vl_images


def _noise(width, height, seed=0):
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


SIZES = [(224, 224), (300, 100), (57, 901), (28, 28)]


@pytest.mark.parametrize("width,height", SIZES)
def test_preprocess_equals_transformers(width, height):
  img = _noise(width, height, seed=width)
  pixels_PxD, grid_Ix3 = vl_images.preprocess([img])
  ref = transformers.Qwen2VLImageProcessorPil()([img], return_tensors="np")
  assert pixels_PxD.dtype == np.float32 and grid_Ix3.dtype == np.int64
  np.testing.assert_array_equal(pixels_PxD, ref["pixel_values"])
  np.testing.assert_array_equal(grid_Ix3, ref["image_grid_thw"])


def test_batch_layout_follows_the_merge_constraints():
  config = vl_images.ImageConfig()
  pixels_PxD, grid_Ix3 = vl_images.preprocess([_noise(w, h) for w, h in SIZES], config)
  assert grid_Ix3.shape == (len(SIZES), 3)
  assert pixels_PxD.shape == (grid_Ix3.prod(axis=1).sum(), 3 * 2 * 14 * 14)
  assert (grid_Ix3[:, 0] == 1).all()
  assert (grid_Ix3[:, 1:] % config.merge_size == 0).all()
  assert (grid_Ix3[:, 1:] * config.patch_size).prod(axis=1).max() <= config.max_pixels
  np.testing.assert_array_equal(qwen2_vl.image_token_counts(grid_Ix3, config.merge_size),
                                grid_Ix3.prod(axis=1) // 4)


def test_unresized_patch_layout_by_hand():
  # 56x56 needs no resize: row 0 is the top-left 14x14 patch, normalised, channel-major and
  # repeated over the 2 temporal slots.
  img = _noise(56, 56)
  pixels_PxD, grid_Ix3 = vl_images.preprocess([img])
  np.testing.assert_array_equal(grid_Ix3, [[1, 4, 4]])
  mean, std = np.array(transformers.image_utils.OPENAI_CLIP_MEAN), np.array(
      transformers.image_utils.OPENAI_CLIP_STD)
  patch_CxHxW = ((np.asarray(img)[:14, :14] / 255.0 - mean) / std).transpose(2, 0, 1)
  want = np.repeat(patch_CxHxW[:, None], 2, axis=1).reshape(-1)
  np.testing.assert_allclose(pixels_PxD[0], want, atol=1e-5)


def test_smaller_pixel_budget_gives_a_smaller_grid():
  img = _noise(448, 448)
  _, big = vl_images.preprocess([img])
  _, small = vl_images.preprocess([img], vl_images.ImageConfig(max_pixels=28 * 28 * 16))
  assert small.prod() < big.prod() and small.prod() <= 4 * 16


def test_preprocess_rejects_bad_input():
  with pytest.raises(images.ImageError, match="Image 1 is mode 'RGBA'.*load_image"):
    vl_images.preprocess([_noise(56, 56), Image.new("RGBA", (56, 56))])
  with pytest.raises(ValueError, match="no images"):
    vl_images.preprocess([])
  with pytest.raises(ValueError, match="min_pixels=10, max_pixels=5"):
    vl_images.ImageConfig(min_pixels=10, max_pixels=5)
  with pytest.raises(ValueError, match="merge_size=2"):
    qwen2_vl.image_token_counts([(1, 3, 4)], 2)


def test_from_pretrained_honours_saved_settings(tmp_path):
  saved = transformers.Qwen2VLImageProcessorPil(min_pixels=1000, max_pixels=28 * 28 * 64,
                                                image_mean=[0.5] * 3, image_std=[0.5] * 3)
  saved.save_pretrained(tmp_path)
  img = _noise(500, 300)
  pixels_PxD, grid_Ix3 = vl_images.preprocess([img], vl_images.processor_from_pretrained(tmp_path))
  ref = saved([img], return_tensors="np")
  np.testing.assert_array_equal(pixels_PxD, ref["pixel_values"])
  np.testing.assert_array_equal(grid_Ix3, ref["image_grid_thw"])
  smaller = vl_images.processor_from_pretrained(tmp_path, max_pixels=28 * 28 * 8)
  assert vl_images.preprocess([img], smaller)[1].prod() < grid_Ix3.prod()


def test_from_pretrained_reads_the_hub_layout(tmp_path):
  # Qwen2-VL-2B-Instruct's file: top-level min/max_pixels, type named after the torch class.
  (tmp_path / "preprocessor_config.json").write_text(json.dumps({
      "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
      "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711],
      "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}))
  processor = vl_images.processor_from_pretrained(str(tmp_path), min_pixels=5000)
  assert isinstance(processor, transformers.Qwen2VLImageProcessorPil)
  assert (processor.size.shortest_edge, processor.size.longest_edge) == (5000, 12845056)


def test_from_pretrained_without_config_names_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"preprocessor_config.json.*{tmp_path}"):
    vl_images.processor_from_pretrained(str(tmp_path))
