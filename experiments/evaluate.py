"""Evaluates confidence methods on a split. The launch command is in each config's docstring."""

from absl import app, flags
from ml_collections import config_flags

from prompt4trust_jax import console, evaluation, fixtures, host_memory, sharding

_CONFIG = config_flags.DEFINE_config_file("config", "configs/eval_demo.py",
                                          "Evaluation config file.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/prompt4trust_eval",
                               "Results; an interrupted evaluation resumes from it.")


def main(argv):
  del argv
  host_memory.retain_freed_memory()  # before JAX starts its thread pools
  if not flags.FLAGS["verbosity"].present:  # -v 0 shows the libraries' INFO logs
    console.quiet_libraries()
  # The demos' random models (unset paths) are made here, as training's launcher made them.
  sharding.join_configured(_CONFIG.value)  # multi-host: before the random models touch JAX
  evaluation.run(fixtures.with_demo_inputs(_CONFIG.value, _WORKDIR.value), _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
