"""Per-device memory and work of one training step, before any hardware is rented.

  python -m experiments.plan_memory --config=configs/pmcvqa.py --config.data.questions_per_step=8
  python -m experiments.plan_memory --config=configs/pmcvqa.py --fake_devices=8 \
      --config.mesh.fsdp=8 --config.data.questions_per_step=8

Compiles every program of a training step at the config's real shapes with abstract inputs
(no weights are read, nothing is allocated) on the devices present; `--fake_devices=N` makes
N CPU devices so any mesh can be planned on one machine. Model shapes come from the
checkpoints' config.json when `policy.path` / `downstream.path` are set, else from
`--policy_shape` / `--downstream_shape` (the paper's models). Prints, per program,

  program=<name> per_device_peak_GB=<x> per_device_tflop=<y> held_GB=<z>

(x: XLA's memory_analysis, arguments + outputs - donated + temporaries; y: cost_analysis of
programs without their loops (XLA counts a loop body once), scaled by the trip counts; z: state held on the device meanwhile, that
the program does not take), and last `peak_GB=<max of x + z>`. XLA:CPU's figures
approximate the GPU and TPU compilers' (BUILD.md says how far).
"""

import dataclasses
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pmcvqa.py", "Experiment config.")
_FAKE_DEVICES = flags.DEFINE_integer("fake_devices", 0, "Plan on this many fake CPU devices "
                                     "(0: the devices present).")
_IMAGE_TOKENS = flags.DEFINE_integer("image_tokens", 1024, "Image tokens per image (after the "
                                     "2x2 merge).")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 512, "Policy prompt tokens (padded).")
_POLICY_SHAPE = flags.DEFINE_string("policy_shape", "qwen2p5_1p5b_instruct",
                                    "models.<name>() when policy.path is unset.")
_PROGRAMS = flags.DEFINE_list("programs", [], "Plan only these programs (default: all).")
_DOWNSTREAM_SHAPE = flags.DEFINE_string("downstream_shape", "qwen2_vl_2b_instruct",
                                        "models.<name>() when downstream.path is unset.")

GB = 1e9
# Downstream prompt around the image and the hint (chat turns, question, options,
# instruction), in tokens: measured on PMC-VQA prompts with the reference preset.
DOWNSTREAM_TEXT_TOKENS = 192


@dataclasses.dataclass
class Program:
  name: str
  peak_bytes: int  # per device: arguments + outputs - aliased + temporaries
  flops: float  # per device
  held_bytes: int  # state resident meanwhile that is not among the program's arguments
  # The compiled program and its abstract arguments (to run it for real at small sizes).
  compiled: object = dataclasses.field(default=None, repr=False)
  arguments: tuple = dataclasses.field(default=(), repr=False)

  def line(self) -> str:
    return (f"program={self.name} per_device_peak_GB={self.peak_bytes / GB:.4g} "
            f"per_device_tflop={self.flops / 1e12:.4g} held_GB={self.held_bytes / GB:.4g}")


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a pytree of (sharded) ShapeDtypeStructs or arrays."""
  import jax
  import numpy as np
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
    total += int(np.prod(shape)) * np.dtype(x.dtype).itemsize
  return total


def _compiled_stats(compiled) -> tuple[int, float]:
  memory = compiled.memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return int(peak), float(cost.get("flops", 0.0))


# XLA:CPU has no half-precision matmul: it widens bfloat16 dots' operands and results to
# float32 (`float-normalization-bf16`), and float16 ones likewise (`change-op-data-type`),
# which would double every half-precision activation in the plan. GPUs and TPUs multiply
# bfloat16 natively, so on CPU the planner compiles bfloat16 programs in float16 (the same
# bytes) with that widening pass off: the dots stay half precision, as theirs do.
_CPU_HALF = "float16"
_CPU_OPTIONS = {"xla_disable_hlo_passes": "change-op-data-type"}


def _on_cpu() -> bool:
  import jax
  return jax.default_backend() == "cpu"


def _compile(lowered):
  return lowered.compile(compiler_options=_CPU_OPTIONS if _on_cpu() else None)


def _half_precision_as_on_accelerators(config):
  """`config`, on CPU with every bfloat16 model dtype as float16 (see `_CPU_HALF`)."""
  import copy
  if not _on_cpu():
    return config
  config = copy.deepcopy(config)
  for section in (config.policy, config.downstream):
    for field in list(section):
      if field.endswith("dtype") and section[field] == "bfloat16":
        section[field] = _CPU_HALF
  return config


def _flops(compiled) -> float:
  return _compiled_stats(compiled)[1]


def _abstract(tree, shardings):
  import jax
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def _model_config(section, shape: str, vision: bool, **overrides):
  from prompt4trust_jax import models
  from prompt4trust_jax.models import checkpoint, families
  if section.path:
    hf = checkpoint.read_config(section.path)
    family = families.get(hf.get("model_type"), os.path.join(section.path, "config.json"))
    return family.model_cls, family.config_from_hf(hf, **overrides)
  cls = models.Qwen2VLForConditionalGeneration if vision else models.Qwen2ForCausalLM
  return cls, getattr(models, shape)(**overrides)


PROGRAMS = ("policy_rollout", "vision_encoder", "downstream_answer", "reference_logprobs",
            "update")


def plan(config, image_tokens: int = 1024, prompt_tokens: int = 512,
         policy_shape: str = "qwen2p5_1p5b_instruct",
         downstream_shape: str = "qwen2_vl_2b_instruct",
         programs: tuple[str, ...] = PROGRAMS, devices=None) -> list[Program]:
  """The step's programs (those named in `programs`), compiled on the config's mesh (over
  `devices`, default all)."""
  unknown = set(programs) - set(PROGRAMS)
  if unknown:
    raise ValueError(f"Unknown programs {sorted(unknown)}; choose from {PROGRAMS}.")
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from prompt4trust_jax import models, padding, run_models, sharding
  from prompt4trust_jax.models import lora, vision
  from prompt4trust_jax.policy import sampling
  from prompt4trust_jax.training import grpo, update

  config = _half_precision_as_on_accelerators(config)
  mesh = sharding.make_mesh(**config.mesh, devices=devices)
  replicated = sharding.replicated(mesh)
  batch_sh = sharding.batch_sharding(mesh)
  Q, G = config.data.questions_per_step, config.sampling.num_generations
  B, P, N = Q * G, prompt_tokens, config.sampling.max_new_tokens
  g, p, d = config.grpo, config.policy, config.downstream
  temperature = config.sampling.temperature
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  sds = lambda shape, dtype, sh=replicated: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)

  # The train state: float32 master parameters (or LoRA adapters on a frozen base) and
  # AdamW moments, sharded by the rules.
  policy_cls, policy_cfg = _model_config(p, policy_shape, False, dtype=p.dtype,
                                         param_dtype=p.get("param_dtype") or "float32",
                                         remat=p.get("remat", "none"),
                                         scan_layers=p.get("scan_layers", False))
  adapters = run_models.lora_config(p)

  def build(cfg):
    model = policy_cls(cfg, rngs=nnx.Rngs(0))
    return model if adapters is None else lora.apply(model, adapters, nnx.Rngs(0))

  tx = update.optimizer(1e-6)
  state = jax.eval_shape(lambda: update.TrainState.create(build(policy_cfg), tx))
  state = _abstract(state, update.state_shardings(state, mesh))
  whole = state.model_state()  # trained and frozen parameters together
  whole_sh = sharding.tree_shardings(whole, mesh)

  def params_in(dtype, rules=None):
    """The policy's parameters in `dtype`, laid out by `rules` (default: training's)."""
    shardings = whole_sh if rules is None else sharding.tree_shardings(whole, mesh, rules)
    return _abstract(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype)),
                                  whole), shardings)

  def rows(shape, dtype, leading=0):
    """An input whose axis `leading` holds rows: split over the batch axes when they divide it."""
    split = shape[leading] % sharding.batch_devices(mesh) == 0
    spec = jax.sharding.PartitionSpec(*(None,) * leading, sharding.BATCH_AXES)
    return sds(shape, dtype, jax.sharding.NamedSharding(mesh, spec) if split else replicated)

  abstract_policy = nnx.eval_shape(lambda: build(policy_cfg))

  def graphdef_in(dtype):
    """The policy's graph computing in `dtype`, as the training loop builds it."""
    return models.graphdef_in(abstract_policy, dtype) or state.graphdef

  sampling_dtype = p.get("sampling_dtype") or p.dtype
  # The KL's reference: a copy (in reference_dtype), or under LoRA the base itself.
  reference_dtype = p.get("reference_dtype") or "float32"
  reference = params_in(reference_dtype) if g.beta and adapters is None else None
  reference_on_device = reference is not None and not p.get("reference_host", False)

  # The downstream, frozen, in its dtype and the sampling layout (`Downstream.from_pretrained`).
  vl_cls, vl_cfg = _model_config(d, downstream_shape, True, dtype=d.dtype, param_dtype=d.dtype)
  vl_graphdef, vl_params = nnx.split(nnx.eval_shape(lambda: vl_cls(vl_cfg, rngs=nnx.Rngs(0))))
  vl_params = _abstract(vl_params, sharding.tree_shardings(vl_params, mesh,
                                                           sharding.sampling_rules()))

  held = {"train_state": per_device_bytes(state),
          "reference": per_device_bytes(reference) if reference_on_device else 0,
          "downstream": per_device_bytes(vl_params)}
  held_except = lambda *names: sum(v for k, v in held.items() if k not in names)

  def policy_rollout():
    """Q prompts x G hints of up to N tokens (one compiled call)."""
    params = sampling.SamplingParams(temperature, config.sampling.top_k, config.sampling.top_p,
                                     (1,), 0, config.sampling.repetition_penalty)
    # The sampling copy (`sharding.sampling_copy`): fsdp shards gathered once per rollout.
    sampler = params_in(sampling_dtype, sharding.sampling_rules())
    sampler_graphdef = graphdef_in(sampling_dtype)
    prompt = rows((Q, P), jnp.int32)
    rollout = lambda: _compile(sampling.generate_padded.lower(
        sampler_graphdef, sampler, prompt, prompt, key, max_new_tokens=N, params=params,
        copies=G))
    with sharding.using(mesh):
      peak = _compiled_stats(rollout())[0]
      flops = _unblocked_flops(rollout)  # the prefill without its layer scan or blocks
      # cost_analysis counts the decode loop's body once; it runs N - 1 times.
      flops += (N - 2) * _decode_step_flops(sampler_graphdef, sampler, B, P + N, N, params, key,
                                            mesh)
    # Without fsdp, parameters already in the sampling dtype are the train state's own (no copy).
    shared = 0 if mesh.shape["fsdp"] > 1 else per_device_bytes(
        [x for x in jax.tree.leaves(whole) if x.dtype == jnp.dtype(sampling_dtype)])
    return Program("policy_rollout", peak, flops, held_except() - shared)

  def vision_encoder():
    """Q images of image_tokens each (one row each, `vision.vision_inputs`)."""
    vcfg = vl_cfg.vision
    L = padding.bucket_length(image_tokens * vcfg.merge_size**2)
    inputs = lambda I: vision.VisionInputs(
        rows((I, L, vcfg.patch_dim), jnp.float32), rows((I, L, 2), jnp.int32),
        rows((I, L), jnp.int32), rows((I, L), jnp.int32), None)  # row aligned
    encoder = jax.jit(lambda s, x: nnx.merge(vl_graphdef, s).encode_images(x))
    # Each data-parallel device encodes its own images, one per step of the attention's loop.
    D = sharding.batch_devices(mesh)
    D = D if Q % D == 0 else 1
    with sharding.using(mesh):
      peak = _compiled_stats(_compile(encoder.lower(vl_params, inputs(Q))))[0]
      # Work: one image per device (XLA's loop body), without query blocks, times Q / D.
      flops = _unblocked_flops(lambda: _compile(encoder.lower(vl_params, inputs(D)))) * Q / D
    return Program("vision_encoder", peak, flops, held_except("downstream"))

  def downstream_answer():
    """Q shared prefixes (image + question), Q x G suffixes (hint + instruction), then up
    to max_new_tokens decoded (one program here, several calls in a run)."""
    prefix, suffix = image_tokens + DOWNSTREAM_TEXT_TOKENS // 2, N + DOWNSTREAM_TEXT_TOKENS // 2
    params = sampling.SamplingParams(d.temperature, d.get("top_k") or 0, d.top_p, (1,), 0,
                                     d.get("repetition_penalty") or 1.0)
    M = d.max_new_tokens
    program = _downstream_answer(vl_graphdef, G, M, params)
    answer = lambda: _compile(program.lower(
        vl_params, rows((Q, prefix), jnp.int32), rows((Q, prefix), jnp.int32),
        rows((3, Q, prefix), jnp.int32, leading=1),
        rows((Q, image_tokens, vl_cfg.text.hidden_size), jnp.dtype(d.dtype)),  # row aligned
        rows((B, suffix), jnp.int32), rows((B, suffix), jnp.int32), key))
    with sharding.using(mesh):
      peak = _compiled_stats(answer())[0]
      flops = _unblocked_flops(answer)  # without the prefill's block loops
      flops += (M - 2) * _decode_step_flops(vl_graphdef, vl_params, B, prefix + suffix + M, M,
                                            params, key, mesh)
    return Program("downstream_answer", peak, flops, held_except("downstream"))

  tokens = sds((B, P + N), jnp.int32, batch_sh)

  def reference_logprobs():
    """[B, P + N] under the frozen reference, once per rollout."""
    if reference is None:  # LoRA: the train state's base, adapters off
      ref_graphdef, ref_params = state.graphdef, whole
    else:
      ref_graphdef, ref_params = graphdef_in(reference_dtype), reference
    forward = lambda chunk: _compile(update.reference_logprobs.lower(
        ref_graphdef, ref_params, tokens, tokens, N, temperature, G, chunk))
    with sharding.using(mesh):
      peak = _compiled_stats(forward(g.get("logprob_chunk")))[0]
      flops = _unblocked_flops(lambda: forward(None))  # a program without loops
    if reference is None:
      peak -= per_device_bytes(whole)  # its arguments are the train state's own buffers
    return Program("reference_logprobs", peak, flops, held_except("reference"))

  def update_step():
    """One optimizer step on the rollout's B completions."""
    loss = grpo.LossConfig(beta=g.beta, max_completion_length=N)
    batch = update.Batch(tokens, tokens, sds((B, N), jnp.float32, batch_sh),
                         sds((B, N), jnp.float32, batch_sh), sds((B,), jnp.float32, batch_sh),
                         sds((B, N), jnp.float32, batch_sh) if g.beta else None)
    step = lambda micro_batches, chunk: update.jit_train_step(
        state, mesh, config=loss, temperature=temperature, micro_batches=micro_batches,
        group_size=G, logprob_chunk=chunk)
    compiled = _compile(step(g.micro_batches, g.get("logprob_chunk")).lower(state, batch))
    peak = _compiled_stats(compiled)[0]
    # Work: one micro-batch without loops (exact counts), times the micro-batches.
    micro = jax.tree.map(lambda x: sds((x.shape[0] // g.micro_batches, *x.shape[1:]), x.dtype,
                                       batch_sh), batch)
    flops = _unblocked_flops(lambda: _compile(step(1, None).lower(state, micro)))
    flops *= g.micro_batches
    return Program("update", peak, flops, held_except("train_state"), compiled, (state, batch))

  builders = dict(policy_rollout=policy_rollout, vision_encoder=vision_encoder,
                  downstream_answer=downstream_answer, reference_logprobs=reference_logprobs,
                  update=update_step)
  if not g.beta:
    builders.pop("reference_logprobs")
  return [build() for name, build in builders.items() if name in programs]


def _unblocked_flops(compile_fn) -> float:
  """Work of `compile_fn()`'s program traced without attention/MLP blocks (`layers.unblocked`).

  Traces are cached per function and arguments, also for jitted functions called inside
  others, so the caches are cleared around it: neither the blocked nor the unblocked
  trace leaks into the other's programs.
  """
  import jax

  from prompt4trust_jax.models import layers
  jax.clear_caches()
  with layers.unblocked():
    flops = _flops(compile_fn())
  jax.clear_caches()
  return flops


def _decode_step_flops(graphdef, params, B, cache_length, max_new_tokens, sampling_params, key,
                       mesh):
  """Work of one decode step (a one-step `decode_chunk` at the full cache size), its rows
  split over the mesh's batch axes and the head laid out for sampling, as in a rollout."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec

  from prompt4trust_jax import sharding
  from prompt4trust_jax.policy import sampling
  model = nnx.eval_shape(lambda: nnx.merge(graphdef, params))
  state = jax.eval_shape(lambda: sampling.init_state(
      model, B, cache_length, max_new_tokens, track_seen=sampling_params.penalized))
  split = B % sharding.batch_devices(mesh) == 0
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
      mesh, PartitionSpec(sharding.BATCH_AXES) if split and x.ndim else PartitionSpec())), state)
  shape = (model.text_config.hidden_size, model.text_config.vocab_size)
  head = jax.ShapeDtypeStruct(shape, jnp.dtype(model.text_config.dtype), sharding=NamedSharding(
      mesh, sharding.fit_spec(PartitionSpec(None, "tensor"), shape, mesh)))
  return _flops(_compile(sampling.decode_chunk.lower(graphdef, params, head, state, key,
                                                     steps=1, params=sampling_params)))


def _downstream_answer(graphdef, G, max_new_tokens, params):
  """Prefill of shared prefixes and per-hint suffixes, then the decode loop, as one program."""
  import jax
  from flax import nnx

  from prompt4trust_jax.policy import head_layout, sampling

  def answer(weights, tokens, mask, positions, image_embeds, suffix_tokens, suffix_mask, rng):
    model = nnx.merge(graphdef, weights)
    head = head_layout.decode_head(model)
    s = sampling.start(model, tokens, mask, rng, positions, image_embeds, head,
                       max_new_tokens=max_new_tokens, params=params, copies=G,
                       suffix_BxT=suffix_tokens, suffix_mask_BxT=suffix_mask)
    s = sampling.decode(model, s, rng, params, head, max_new_tokens - 1)
    return s.tokens_BxN, s.lengths_B

  return jax.jit(answer)


def main(argv):
  del argv
  # Set before the first device is touched. XLA:CPU's default scheduler trades memory for
  # parallelism; its memory-minimising one orders buffers as the GPU and TPU compilers'
  # memory-aware schedulers do, so the peaks approximate theirs.
  xla_flags = [os.environ.get("XLA_FLAGS", ""),
               "--xla_cpu_enable_concurrency_optimized_scheduler=false"]
  if _FAKE_DEVICES.value:
    xla_flags.append(f"--xla_force_host_platform_device_count={_FAKE_DEVICES.value}")
    os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = " ".join(xla_flags).strip()
  programs = plan(_CONFIG.value, _IMAGE_TOKENS.value, _PROMPT_TOKENS.value, _POLICY_SHAPE.value,
                  _DOWNSTREAM_SHAPE.value, tuple(_PROGRAMS.value) or PROGRAMS)
  for program in programs:
    print(program.line())
  print(f"peak_GB={max(p.peak_bytes + p.held_bytes for p in programs) / GB:.2f}")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
