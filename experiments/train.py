"""Trains a Prompt4Trust policy. The launch command is in each config's docstring."""

from absl import app, flags
from ml_collections import config_flags

from prompt4trust_jax import console, fixtures, host_memory, sharding
from prompt4trust_jax.training import train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/prompt4trust_demo", "Checkpoints and logs.")


def main(argv):
  del argv
  host_memory.retain_freed_memory()  # before JAX starts its thread pools
  if not flags.FLAGS["verbosity"].present:  # -v 0 shows the libraries' INFO logs
    console.quiet_libraries()
  # The demos' random models (unset paths) are made here, once per workdir, not by the loop.
  sharding.join_configured(_CONFIG.value)  # multi-host: before the random models touch JAX
  config = fixtures.with_demo_inputs(_CONFIG.value, _WORKDIR.value)
  metrics = train.run(config, _WORKDIR.value)
  print("final: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
  app.run(main)
