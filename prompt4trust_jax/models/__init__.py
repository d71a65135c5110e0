"""Models: the Qwen2 policy LM (and, later, the Qwen2-VL downstream), HF import/export."""

from prompt4trust_jax.models.checkpoint import export_hf, flat_params, from_pretrained, save
from prompt4trust_jax.models.qwen2 import (Qwen2Config, Qwen2ForCausalLM, qwen2p5_0p5b_instruct,
                                           qwen2p5_1p5b_instruct, qwen2p5_3b_instruct,
                                           qwen2p5_7b_instruct)
from prompt4trust_jax.models.tokenizer import load_tokenizer
