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
