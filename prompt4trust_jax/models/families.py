"""Model families known to `from_pretrained`, keyed by config.json `model_type`."""

import dataclasses
from collections.abc import Callable
from typing import Any

from prompt4trust_jax.models import qwen2
from prompt4trust_jax.models.hf_weights import Rule


@dataclasses.dataclass(frozen=True)
class Family:
  model_cls: type
  config_from_hf: Callable[..., Any]  # (config.json dict, **dtype overrides) -> config
  config_to_hf: Callable[[Any], dict]
  rules: tuple[Rule, ...]
  ignore: tuple[str, ...] = ()  # regexes of hub keys to skip (buffers, tied copies)


QWEN2_RULES = (
    Rule("model.embed_tokens.weight", "model.embed_tokens.embedding"),
    Rule("model.layers.{i}.self_attn.{proj}.weight", "model.layers.{i}.self_attn.{proj}.kernel", True),
    Rule("model.layers.{i}.self_attn.{proj}.bias", "model.layers.{i}.self_attn.{proj}.bias"),
    Rule("model.layers.{i}.mlp.{proj}.weight", "model.layers.{i}.mlp.{proj}.kernel", True),
    Rule("model.layers.{i}.{norm}.weight", "model.layers.{i}.{norm}.scale"),
    Rule("model.norm.weight", "model.norm.scale"),
    Rule("lm_head.weight", "lm_head.kernel", True),
)

FAMILIES: dict[str, Family] = {
    "qwen2": Family(
        qwen2.Qwen2ForCausalLM, qwen2.Qwen2Config.from_hf, qwen2.to_hf, QWEN2_RULES,
        # Older exports carry RoPE buffers; tied checkpoints may still store lm_head.
        ignore=(r"rotary_emb\.inv_freq$", r"^lm_head\.weight$")),
}


def get(model_type: str | None, source: str) -> Family:
  if model_type not in FAMILIES:
    raise ValueError(f"{source}: model_type {model_type!r} is not supported; supported: "
                     f"{sorted(FAMILIES)}.")
  return FAMILIES[model_type]
