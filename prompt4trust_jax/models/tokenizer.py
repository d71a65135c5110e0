"""Tokenizers and chat templates, read from the checkpoint directory only."""

import json
import os

import transformers

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
  """`transformers.AutoTokenizer` from local files (never the network, never remote code)."""
  if not os.path.isdir(path) or not any(os.path.exists(os.path.join(path, f))
                                        for f in _TOKENIZER_FILES):
    raise FileNotFoundError(
        f"No tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {path}. Copy them from the "
        "hub download next to config.json (experiments.convert keeps them).")
  return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                    trust_remote_code=False)


def chat_prompt_ids(tokenizer, user_text: str) -> list[int]:
  """Token ids of one user turn in the model's own chat template, ready to generate."""
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError("The tokenizer has no chat_template; use an Instruct checkpoint's tokenizer.")
  ids = tokenizer.apply_chat_template([{"role": "user", "content": user_text}],
                                      add_generation_prompt=True, tokenize=True)
  # Newer transformers return a BatchEncoding here, older ones a plain list.
  return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def stop_token_ids(tokenizer, path: str | None = None) -> list[int]:
  """EOS ids: the checkpoint's generation_config.json, else the tokenizer's end tokens."""
  if path and os.path.exists(os.path.join(path, "generation_config.json")):
    with open(os.path.join(path, "generation_config.json")) as f:
      eos = json.load(f).get("eos_token_id")
    if eos is not None:
      return sorted(set([eos] if isinstance(eos, int) else eos))
  vocab = tokenizer.get_vocab()
  ids = {vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab}
  if tokenizer.eos_token_id is not None:
    ids.add(tokenizer.eos_token_id)
  return sorted(ids)
