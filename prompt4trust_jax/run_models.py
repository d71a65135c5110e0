"""The models a run's config names: checkpoint directories, the policy as training holds it
(dtypes, LoRA adapters) and its sampling settings. Training and evaluation both start here.
Random checkpoints for the demos are made before, by the launchers
(`fixtures.with_demo_inputs`).
"""

import jax
from flax import nnx

from prompt4trust_jax import models, sharding
from prompt4trust_jax.models import generation_config
from prompt4trust_jax.models import lora
from prompt4trust_jax.models import tokenizer as tokenizer_lib


def model_dir(section, name: str) -> str:
  """The checkpoint directory of config section `name` (`policy`, `downstream`)."""
  if not section.get("path"):
    raise ValueError(f"{name}.path is unset: set it to a hub-layout checkpoint directory, or "
                     f"launch through experiments/train.py or experiments/evaluate.py, which "
                     f"make a random {name} of {name}.random_shape for the demos "
                     "(fixtures.with_demo_inputs).")
  return section.path


def policy_sampling(section, path: str) -> dict:
  """temperature / top_p / top_k / repetition_penalty of a policy sampling section, unset ones
  from the checkpoint's generation_config.json when `sampling_defaults` says so."""
  settings = {k: section.get(k) for k in generation_config.SAMPLING_FIELDS}
  return generation_config.resolve(settings, path, section.get("sampling_defaults", "neutral"))


def lora_config(section) -> lora.LoRAConfig | None:
  """The policy section's LoRA settings (None: full fine-tuning, `lora_rank` 0)."""
  if not section.get("lora_rank"):
    return None
  targets = section.get("lora_targets") or ",".join(lora.ALL_PROJECTIONS)
  return lora.LoRAConfig(section.lora_rank, section.get("lora_alpha", 32.0),
                         tuple(t.strip() for t in targets.split(",") if t.strip()))


def policy_model(section, seed: int, mesh=None):
  """`(model, tokenizer, stop ids, path)` of the policy as training holds it: parameters in
  `section.param_dtype` (float32: the master copy; `section.dtype` is the compute dtype),
  with zero-initialised LoRA adapters (float32) when `section.lora_rank` is set."""
  path = model_dir(section, "policy")
  model = models.from_pretrained(path, dtype=section.dtype,
                                 param_dtype=section.get("param_dtype") or "float32", mesh=mesh,
                                 remat=section.get("remat", "none"),
                                 scan_layers=section.get("scan_layers", False))
  adapters = lora_config(section)
  if adapters is not None:
    lora.apply(model, adapters, nnx.Rngs(seed))
    if mesh is not None:  # beside the sharded base, by the partition rules
      placed = nnx.state(model, nnx.LoRAParam)
      nnx.update(model, jax.device_put(placed, sharding.tree_shardings(placed, mesh)))
  tokenizer = models.load_tokenizer(path)
  return model, tokenizer, tokenizer_lib.stop_token_ids(tokenizer, path), path
