"""Model families known to `from_pretrained`, keyed by config.json `model_type`.

An entry says everything the rest of the package needs of a family that its models do not
(`protocol.DecoderModel`): how to read and write its checkpoints, where its weights live on a
mesh, and how its images become model inputs. A new family is its own files plus one entry.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from jax.sharding import PartitionSpec

from prompt4trust_jax.models import qwen2
from prompt4trust_jax.models import qwen2_vl
from prompt4trust_jax.models import qwen2_vl_images
from prompt4trust_jax.models.hf_weights import T, Rule
from prompt4trust_jax.models.protocol import ImageProcessing


@dataclasses.dataclass(frozen=True)
class Family:
  model_cls: type
  config_from_hf: Callable[..., Any]  # (config.json dict, **dtype overrides) -> config
  config_to_hf: Callable[[Any], dict]
  rules: tuple[Rule, ...]  # hub checkpoint keys -> module paths
  # (regex on a parameter's dotted path, its PartitionSpec): every parameter of two or more
  # dimensions must match one (tests/sharding_test.py); `sharding.param_rules` joins them.
  partition_rules: tuple[tuple[str, PartitionSpec], ...]
  ignore: tuple[str, ...] = ()  # regexes of hub keys to skip (buffers, tied copies)
  images: ImageProcessing | None = None  # a multimodal family's image processor


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

_QWEN2 = Family(qwen2.Qwen2ForCausalLM, qwen2.Qwen2Config.from_hf, qwen2.to_hf, QWEN2_RULES,
                qwen2.PARTITION_RULES, _IGNORE)
_QWEN2_VL = Family(qwen2_vl.Qwen2VLForConditionalGeneration, qwen2_vl.Qwen2VLConfig.from_hf,
                   qwen2_vl.to_hf, QWEN2_VL_RULES, qwen2_vl.PARTITION_RULES, _IGNORE,
                   images=qwen2_vl_images)

FAMILIES: dict[str, Family] = {"qwen2": _QWEN2, "qwen2_vl": _QWEN2_VL, "qwen2_5_vl": _QWEN2_VL}


def get(model_type: str | None, source: str) -> Family:
  if model_type not in FAMILIES:
    raise ValueError(f"{source}: model_type {model_type!r} is not supported; supported: "
                     f"{sorted(FAMILIES)}.")
  return FAMILIES[model_type]


def of(model) -> Family:
  """The family whose model class built `model` (e.g. for its image processor)."""
  for family in FAMILIES.values():
    if isinstance(model, family.model_cls):
      return family
  raise ValueError(f"{type(model).__name__} is no registered family's model (families: "
                   f"{sorted(FAMILIES)}); add its entry to models/families.py.")
