"""Models: the Qwen2 policy LM, the Qwen2-VL / Qwen2.5-VL downstream, HF import/export."""

from prompt4trust_jax.models.checkpoint import (export_hf, flat_params, from_pretrained,
                                               graphdef_in, save)
from prompt4trust_jax.models.qwen2 import (Qwen2Config, Qwen2ForCausalLM, qwen2p5_0p5b_instruct,
                                           qwen2p5_1p5b_instruct, qwen2p5_3b_instruct,
                                           qwen2p5_7b_instruct)
from prompt4trust_jax.models.qwen2_vl import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                                              qwen2_vl_2b_instruct, qwen2_vl_7b_instruct,
                                              qwen2p5_vl_3b_instruct, qwen2p5_vl_7b_instruct)
from prompt4trust_jax.models.tokenizer import load_tokenizer

__all__ = [
    "Qwen2Config", "Qwen2ForCausalLM", "Qwen2VLConfig", "Qwen2VLForConditionalGeneration",
    "export_hf", "flat_params", "from_pretrained", "graphdef_in", "load_tokenizer", "save",
    "qwen2p5_0p5b_instruct", "qwen2p5_1p5b_instruct", "qwen2p5_3b_instruct", "qwen2p5_7b_instruct",
    "qwen2_vl_2b_instruct", "qwen2_vl_7b_instruct", "qwen2p5_vl_3b_instruct",
    "qwen2p5_vl_7b_instruct",
]
