"""transformers (PyTorch) as the reference: random checkpoints in hub layout, logits, generate."""

import numpy as np
import torch
import transformers

from prompt4trust_jax import fixtures

QWEN2_DEFAULTS = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                      rms_norm_eps=1e-6, tie_word_embeddings=True)


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> None:
  """Every parameter random (HF init leaves biases 0 and norms 1, which hides mistakes)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      centre = 1.0 if name.endswith("norm.weight") else 0.0  # norm scales stay near 1
      p.copy_(torch.randn(p.shape, generator=gen) * std + centre)


def qwen2_model(seed: int = 0, **config) -> transformers.Qwen2ForCausalLM:
  torch.manual_seed(seed)
  model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**QWEN2_DEFAULTS, **config}))
  randomize_(model, seed)
  return model.eval()


def write_qwen2(out_dir: str, seed: int = 0, dtype=torch.float32, max_shard_size=None,
                **config) -> str:
  """Saves a random transformers Qwen2 (safetensors, hub layout) plus a tokenizer."""
  model = qwen2_model(seed, **config).to(dtype)
  kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(out_dir, **kwargs)
  fixtures.write_tokenizer(out_dir, model.config.vocab_size)
  return out_dir


def load(path: str, dtype=torch.float32) -> transformers.PreTrainedModel:
  return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def logits(model, input_ids, attention_mask=None, position_ids=None) -> np.ndarray:
  as_t = lambda x: None if x is None else torch.as_tensor(np.asarray(x), dtype=torch.long)
  with torch.no_grad():
    out = model(input_ids=as_t(input_ids), attention_mask=as_t(attention_mask),
                position_ids=as_t(position_ids))
  return out.logits.float().numpy()


def greedy(model, prompt: list[int], max_new_tokens: int, eos_token_id=None) -> list[int]:
  """transformers' greedy `generate` of one unpadded prompt; the new tokens."""
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=eos_token_id, pad_token_id=0)
  return out[0, len(prompt):].tolist()


IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 290, 291, 292, 293
VL_TEXT = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
               rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                "rope_theta": 10000.0})
VL_IDS = dict(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
              vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)


def qwen2_vl_model(seed: int = 0, qwen2_5: bool = False, tie_word_embeddings: bool = False):
  """A tiny random Qwen2-VL (or Qwen2.5-VL with windows and a full-attention block)."""
  torch.manual_seed(seed)
  if qwen2_5:
    config = transformers.Qwen2_5_VLConfig(
        text_config=VL_TEXT, vision_config=dict(
            depth=3, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=64,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
            fullatt_block_indexes=[1]),
        tie_word_embeddings=tie_word_embeddings, **VL_IDS)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config)
  else:
    config = transformers.Qwen2VLConfig(
        text_config=VL_TEXT, vision_config=dict(
            depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=tie_word_embeddings, **VL_IDS)
    model = transformers.Qwen2VLForConditionalGeneration(config)
  randomize_(model, seed, std=0.05)
  return model.eval()


def image_processor(min_pixels=56 * 56, max_pixels=28 * 28 * 64):
  return transformers.Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def vl_logits(model, input_ids, pixel_values=None, image_grid_thw=None) -> np.ndarray:
  """Logits of one unpadded multimodal prompt (batch 1)."""
  ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)[None]
  kw = {}
  if pixel_values is not None:
    kw = dict(pixel_values=torch.as_tensor(np.asarray(pixel_values)),
              image_grid_thw=torch.as_tensor(np.asarray(image_grid_thw)),
              mm_token_type_ids=(ids == IMAGE_TOKEN).long())
  with torch.no_grad():
    return model(input_ids=ids, **kw).logits[0].float().numpy()


def load_vl(path: str):
  return transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()


def vl_greedy(model, prompt, pixel_values, image_grid_thw, max_new_tokens: int) -> list[int]:
  """transformers' greedy `generate` of one unpadded multimodal prompt; the new tokens."""
  ids = torch.tensor([prompt])
  with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         pixel_values=torch.as_tensor(np.asarray(pixel_values)),
                         image_grid_thw=torch.as_tensor(np.asarray(image_grid_thw)),
                         mm_token_type_ids=(ids == IMAGE_TOKEN).long(), do_sample=False,
                         max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0)
  return out[0, len(prompt):].tolist()
