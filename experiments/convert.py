"""Converts checkpoints once, ahead of training.

  # Hugging Face download -> Orbax checkpoint (configs point models at these):
  python -m experiments.convert --hf_dir=~/Qwen2.5-1.5B-Instruct --out=ckpts/qwen2p5_1p5b
  # Orbax checkpoint (e.g. a trained policy) -> Hugging Face safetensors directory:
  python -m experiments.convert --ckpt_dir=ckpts/policy --out=export/policy_hf --dtype=bfloat16
  # A training run's latest policy (LoRA adapters merged) -> Hugging Face safetensors:
  python -m experiments.convert --config=configs/pmcvqa.py --config.policy.path=ckpts/qwen2p5_1p5b \
      --train_workdir=runs/pmcvqa --out=export/policy_hf --dtype=bfloat16
"""

from absl import app, flags
from ml_collections import config_flags

from prompt4trust_jax import checkpoints, fixtures, models

_CONFIG = config_flags.DEFINE_config_file("config", None, "The training run's config (with "
                                          "--train_workdir).")
_TRAIN_WORKDIR = flags.DEFINE_string("train_workdir", None, "A training run's workdir to export.")

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model directory to import.")
_CKPT_DIR = flags.DEFINE_string("ckpt_dir", None, "Orbax checkpoint directory to export.")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_DTYPE = flags.DEFINE_string("dtype", None, "Parameter dtype to store (default: as loaded).")


def main(argv):
  del argv
  if _TRAIN_WORKDIR.value is not None:
    if _CONFIG.value is None:
      raise app.UsageError("--train_workdir needs the run's --config (and its overrides).")
    # A demo run's policy is the random base the training launcher made in its workdir.
    config = fixtures.with_demo_inputs(_CONFIG.value, _TRAIN_WORKDIR.value)
    step = checkpoints.export_policy(config, _TRAIN_WORKDIR.value, _OUT.value,
                                     dtype=_DTYPE.value)
    print(f"wrote {_OUT.value} (rollout {step})")
    return
  if (_HF_DIR.value is None) == (_CKPT_DIR.value is None):
    raise app.UsageError("Pass exactly one of --hf_dir (import), --ckpt_dir (export) or "
                         "--train_workdir with --config (export a trained policy).")
  source = _HF_DIR.value or _CKPT_DIR.value
  dtype = _DTYPE.value or "float32"
  model = models.from_pretrained(source, dtype=dtype)
  if _HF_DIR.value:
    models.save(model, _OUT.value, source_dir=source)
  else:
    models.export_hf(model, _OUT.value, source_dir=source, dtype=_DTYPE.value)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
