"""Tokenizers and chat templates, read from the checkpoint directory only."""

import json
import os

import transformers

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
  """`transformers.AutoTokenizer` from local files (never the network, never remote code).

  A multimodal checkpoint's processor template (`chat_template.jinja` or `chat_template.json`,
  which `AutoTokenizer` does not read) replaces the tokenizer's, as transformers' processors
  render chats with it.
  """
  if not os.path.isdir(path) or not any(os.path.exists(os.path.join(path, f))
                                        for f in _TOKENIZER_FILES):
    raise FileNotFoundError(
        f"No tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {path}. Copy them from the "
        "hub download next to config.json (experiments.convert keeps them).")
  tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                         trust_remote_code=False)
  template = processor_chat_template(path)
  if template is not None:
    tokenizer.chat_template = template
  return tokenizer


def processor_chat_template(path: str) -> str | None:
  """The processor's chat template shipped in `path`, if any."""
  jinja = os.path.join(path, "chat_template.jinja")
  if os.path.exists(jinja):
    with open(jinja, encoding="utf-8") as f:
      return f.read()
  as_json = os.path.join(path, "chat_template.json")
  if os.path.exists(as_json):
    with open(as_json, encoding="utf-8") as f:
      return json.load(f).get("chat_template")
  return None


def chat_text(tokenizer, content) -> str:
  """One user turn (a str, or a list of content parts) in the chat template, ready to generate."""
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError("The tokenizer has no chat_template; use an Instruct checkpoint's tokenizer.")
  return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                       add_generation_prompt=True, tokenize=False)


def chat_prompt_ids(tokenizer, user_text: str) -> list[int]:
  """Token ids of one user turn in the model's own chat template, ready to generate.

  The rendered text is tokenized whole, without added special tokens, as transformers'
  `apply_chat_template(tokenize=True)`, TRL and vLLM's chat endpoint do.
  """
  return list(tokenizer.encode(chat_text(tokenizer, user_text), add_special_tokens=False))


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
