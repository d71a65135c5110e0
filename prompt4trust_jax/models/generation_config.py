"""A checkpoint's generation_config.json as the defaults of sampling parameters a caller leaves unset.

vLLM (>= 0.8, `--generation-config auto`, its default) fills every sampling parameter a request
does not set from the served checkpoint's generation_config.json; the original Prompt4Trust
left several unset (the downstream's top_k and repetition penalty, the evaluation policy's
repetition penalty), so they came from that file. `resolve` does the same for a dict of
settings whose unset entries are None.
"""

import json
import os
from collections.abc import Mapping
from typing import Any

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")
# An unset parameter without a generation config (vLLM's defaults; top_k 0 is "off").
NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
SOURCES = ("generation_config", "neutral")


def read(path: str | None) -> dict[str, Any]:
  """The sampling fields `path`/generation_config.json sets ({} without the file)."""
  file = None if not path else os.path.join(path, "generation_config.json")
  if file is None or not os.path.exists(file):
    return {}
  with open(file) as f:
    raw = json.load(f)
  out = {k: raw[k] for k in SAMPLING_FIELDS if raw.get(k) is not None}
  if "top_k" in out and out["top_k"] < 0:
    out["top_k"] = 0  # vLLM's -1 and our 0 both mean no top-k filter
  return out


def resolve(settings: Mapping[str, Any], path: str | None,
            source: str = "generation_config") -> dict[str, Any]:
  """`settings` with each unset (None) sampling field filled.

  source "generation_config": from the checkpoint's file where it sets the field, else the
  neutral default; "neutral": always the neutral default (nothing is read).
  """
  if source not in SOURCES:
    raise ValueError(f"Unknown sampling_defaults {source!r}; choose from {SOURCES}.")
  defaults = {**NEUTRAL, **(read(path) if source == "generation_config" else {})}
  out = dict(settings)
  for name in SAMPLING_FIELDS:
    if out.get(name) is None:
      out[name] = defaults[name]
  return out
