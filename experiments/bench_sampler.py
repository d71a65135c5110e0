"""Sampler throughput on a random Qwen2 of a named shape (optionally vs transformers).

  python -m experiments.bench_sampler --shape=small --batch=8 --prompt_len=128 \
      --new_tokens=64 --compare_hf

EOS is disabled so every row generates exactly `new_tokens`; the first (compiling)
call is excluded. Prefill and per-token decode are timed apart and set against
rooflines from this device's measured matmul throughput (prefill) and memory
bandwidth (decode reads every weight once per step), and against the same calls'
weight matmuls alone at these shapes (`matmul_only_*`: what this device's matmul
kernels allow with every other op free). `tokens_per_s=` comes last.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from experiments import timing
from prompt4trust_jax import fixtures, models
from prompt4trust_jax.policy import head_layout, sampling

_SHAPE = flags.DEFINE_enum("shape", "small", ["tiny", "small", "qwen2p5_1p5b"], "Model shape.")
_BATCH = flags.DEFINE_integer("batch", 8, "Prompts per call.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 128, "Tokens per prompt.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per prompt.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter/compute dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (the median is reported).")
_COMPARE_HF = flags.DEFINE_bool("compare_hf", False, "Also time transformers' generate.")

SAMPLING = dict(temperature=0.6, top_p=0.95, top_k=100)


def _config():
  if _SHAPE.value == "qwen2p5_1p5b":
    return models.qwen2p5_1p5b_instruct(dtype=_DTYPE.value, param_dtype=_DTYPE.value)
  return fixtures.shape_config(_SHAPE.value, dtype=_DTYPE.value, param_dtype=_DTYPE.value)


def _device_peaks():
  """Memory bandwidth (bytes/s) and matmul throughput (FLOP/s) measured on this device."""
  big = jnp.ones((256 << 20) // 4, jnp.float32)  # 256 MiB, beyond any cache
  read = jax.jit(jnp.sum)
  bandwidth = big.nbytes / timing.median_seconds(lambda: read(big).block_until_ready(), 5)
  a = jnp.ones((2048, 2048), jnp.dtype(_DTYPE.value))
  matmul = jax.jit(lambda x: x @ x)
  flops = 2 * 2048**3 / timing.median_seconds(lambda: matmul(a).block_until_ready(), 5)
  print(f"memory_bandwidth_GBps={bandwidth / 1e9:.1f} matmul_GFLOPs={flops / 1e9:.0f}")
  return bandwidth, flops


def _matmul_seconds(model, rows: int, head_rows: int) -> tuple[float, int]:
  """Measured time of the weight matmuls alone: `rows` tokens through every layer matrix,
  `head_rows` through the LM head as the decode loop lays it out (`head_layout.decode_head`).

  One jit, no other op: with rows = head_rows = batch, the floor a decode step could
  reach with this device's own matmul kernels, which at a small batch stream the weights
  slower than the bandwidth probe reads memory. Returns (seconds, weight bytes read).
  """
  layers = [w for name, w in models.flat_params(model).items()
            if w.ndim == 2 and "embed_tokens" not in name and "lm_head" not in name]
  head = head_layout.decode_head(model)
  # One input per matrix height, so no product slices (copies) its input.
  xs = {w.shape[0]: jnp.ones((rows, w.shape[0]), head.dtype) for w in layers}
  y = jnp.ones((head_rows, head.shape[0]), head.dtype)
  repeats = 8  # inside one jit, as a decode loop runs: no per-call dispatch in the figure

  @jax.jit
  def matmuls(xs, y, layers, head):
    def body(_, xs_y):
      xs, y = xs_y
      outs = [xs[w.shape[0]] @ w for w in layers] + [y @ head]
      # A data dependence on every product keeps XLA from hoisting them out of the loop.
      tiny = 1e-30 * sum(out[0, 0] for out in outs)
      return {d: x + tiny for d, x in xs.items()}, y + tiny
    return jax.lax.fori_loop(0, repeats, body, (xs, y))

  seconds = timing.median_seconds(
      lambda: jax.block_until_ready(matmuls(xs, y, layers, head)), 5) / repeats
  return seconds, sum(w.nbytes for w in layers) + head.nbytes


def _hf_tokens_per_s(config, prompts):
  import torch  # test/benchmark dependency only
  import transformers
  hf_config = transformers.Qwen2Config(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
      tie_word_embeddings=config.tie_word_embeddings, rope_theta=config.rope_theta)
  dtype = torch.bfloat16 if _DTYPE.value == "bfloat16" else torch.float32
  model = transformers.Qwen2ForCausalLM(hf_config).to(dtype).eval()
  ids = torch.tensor(prompts)
  n = _NEW_TOKENS.value

  def run():
    with torch.no_grad():
      out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                           max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0,
                           **SAMPLING)
    assert out.shape[1] == ids.shape[1] + n

  return ids.shape[0] * n / timing.median_seconds(run, _REPEATS.value)


def main(argv):
  del argv
  timing.setup_host()
  config = _config()
  model = models.Qwen2ForCausalLM(config, rngs=nnx.Rngs(0))
  prompts = np.random.default_rng(0).integers(
      0, config.vocab_size, (_BATCH.value, _PROMPT_LEN.value)).tolist()
  n = _NEW_TOKENS.value
  keys = iter(jax.random.split(jax.random.key(0), 2 * (_REPEATS.value + 1)))

  def seconds_for(new_tokens):
    def run():
      out = sampling.generate(model, prompts, max_new_tokens=new_tokens, rng=next(keys), **SAMPLING)
      assert (out.lengths_B == new_tokens).all()
    return timing.median_seconds(run, _REPEATS.value)

  seconds = seconds_for(n)
  prefill_seconds = seconds_for(1)  # prefill and the first token
  step_seconds = (seconds - prefill_seconds) / max(n - 1, 1)
  tokens_per_s = _BATCH.value * n / seconds
  params = models.flat_params(model)
  n_params = sum(x.size for x in params.values())
  bandwidth, flops = _device_peaks()
  # Prefill is matmul bound: 2 FLOPs per non-embedding parameter per prompt token.
  embedding = config.vocab_size * config.hidden_size
  prefill_floor = 2 * (n_params - embedding) * _BATCH.value * _PROMPT_LEN.value / flops
  # A decode step reads every weight once (the tied head reads the embedding table).
  step_floor = max(sum(x.nbytes for x in params.values()) / bandwidth,
                   2 * n_params * _BATCH.value / flops)
  # The same floors from this device's own matmul kernels at these shapes, measured.
  step_matmuls, step_bytes = _matmul_seconds(model, _BATCH.value, _BATCH.value)
  prefill_matmuls, _ = _matmul_seconds(model, _BATCH.value * _PROMPT_LEN.value, _BATCH.value)
  floor_seconds = prefill_matmuls + (n - 1) * step_matmuls
  print(f"device={jax.devices()[0].device_kind} shape={_SHAPE.value} dtype={_DTYPE.value} "
        f"params={n_params / 1e6:.1f}M batch={_BATCH.value} prompt_len={_PROMPT_LEN.value} "
        f"new_tokens={n}")
  print(f"seconds_per_call={seconds:.3f} prefill_s={prefill_seconds:.3f} "
        f"prefill_roofline_s={prefill_floor:.3f} decode_ms_per_step={1e3 * step_seconds:.2f} "
        f"decode_roofline_ms_per_step={1e3 * step_floor:.2f} "
        f"decode_roofline_fraction={step_floor / step_seconds:.2f}")
  print(f"decode_matmul_ms_per_step={1e3 * step_matmuls:.2f} "
        f"decode_matmul_GBps={step_bytes / step_matmuls / 1e9:.1f} "
        f"matmul_only_seconds_per_call={floor_seconds:.3f} "
        f"matmul_only_tokens_per_s={_BATCH.value * n / floor_seconds:.1f}")
  if _COMPARE_HF.value:
    hf = _hf_tokens_per_s(config, prompts)
    print(f"hf_tokens_per_s={hf:.1f}")
    print(f"matmul_only_speedup={_BATCH.value * n / floor_seconds / hf:.2f}")
    print(f"speedup={tokens_per_s / hf:.2f}")
  print(f"tokens_per_s={tokens_per_s:.1f}")


if __name__ == "__main__":
  app.run(main)
