"""Model families known to `from_pretrained`, keyed by config.json `model_type`."""

import dataclasses
from collections.abc import Callable
from typing import Any

from prompt4trust_jax.models import qwen2
from prompt4trust_jax.models import qwen2_vl
from prompt4trust_jax.models.hf_weights import T, Rule


@dataclasses.dataclass(frozen=True)
class Family:
  model_cls: type
  config_from_hf: Callable[..., Any]  # (config.json dict, **dtype overrides) -> config
  config_to_hf: Callable[[Any], dict]
  rules: tuple[Rule, ...]
  ignore: tuple[str, ...] = ()  # regexes of hub keys to skip (buffers, tied copies)


QWEN2_RULES = (
    Rule("model.embed_tokens.weight", "model.embed_tokens.embedding"),
    Rule("model.layers.{i}.self_attn.{proj}.weight", "model.layers.{i}.self_attn.{proj}.kernel", T),
    Rule("model.layers.{i}.self_attn.{proj}.bias", "model.layers.{i}.self_attn.{proj}.bias"),
    Rule("model.layers.{i}.mlp.{proj}.weight", "model.layers.{i}.mlp.{proj}.kernel", T),
    Rule("model.layers.{i}.{norm}.weight", "model.layers.{i}.{norm}.scale"),
    Rule("model.norm.weight", "model.norm.scale"),
    Rule("lm_head.weight", "lm_head.kernel", T),
)

_VISION_RULES = (
    Rule("visual.patch_embed.proj.weight", "visual.patch_embed", (1, 2, 3, 4, 0)),
    Rule("visual.blocks.{i}.{module}.{proj}.weight", "visual.blocks.{i}.{module}.{proj}.kernel", T),
    Rule("visual.blocks.{i}.{module}.{proj}.bias", "visual.blocks.{i}.{module}.{proj}.bias"),
    Rule("visual.blocks.{i}.{norm}.weight", "visual.blocks.{i}.{norm}.scale"),
    Rule("visual.blocks.{i}.{norm}.bias", "visual.blocks.{i}.{norm}.bias"),
    Rule("visual.merger.ln_q.weight", "visual.merger.ln_q.scale"),
    Rule("visual.merger.ln_q.bias", "visual.merger.ln_q.bias"),
    Rule("visual.merger.mlp.0.weight", "visual.merger.fc1.kernel", T),
    Rule("visual.merger.mlp.0.bias", "visual.merger.fc1.bias"),
    Rule("visual.merger.mlp.2.weight", "visual.merger.fc2.kernel", T),
    Rule("visual.merger.mlp.2.bias", "visual.merger.fc2.bias"),
)

# The hub layout first (export writes it); then the layout transformers 4.5x re-saves.
QWEN2_VL_RULES = (
    QWEN2_RULES + _VISION_RULES
    + tuple(Rule(r.hf.replace("model.", "model.language_model.", 1), r.ours, r.perm)
            for r in QWEN2_RULES if r.hf.startswith("model."))
    + tuple(Rule("model." + r.hf, r.ours, r.perm) for r in _VISION_RULES))

# Older exports carry RoPE buffers; tied checkpoints may still store lm_head.
_IGNORE = (r"rotary_emb\.inv_freq$", r"^lm_head\.weight$")

FAMILIES: dict[str, Family] = {
    "qwen2": Family(qwen2.Qwen2ForCausalLM, qwen2.Qwen2Config.from_hf, qwen2.to_hf, QWEN2_RULES,
                    _IGNORE),
    "qwen2_vl": Family(qwen2_vl.Qwen2VLForConditionalGeneration, qwen2_vl.Qwen2VLConfig.from_hf,
                       qwen2_vl.to_hf, QWEN2_VL_RULES, _IGNORE),
    "qwen2_5_vl": Family(qwen2_vl.Qwen2VLForConditionalGeneration, qwen2_vl.Qwen2VLConfig.from_hf,
                         qwen2_vl.to_hf, QWEN2_VL_RULES, _IGNORE),
}


def get(model_type: str | None, source: str) -> Family:
  if model_type not in FAMILIES:
    raise ValueError(f"{source}: model_type {model_type!r} is not supported; supported: "
                     f"{sorted(FAMILIES)}.")
  return FAMILIES[model_type]
