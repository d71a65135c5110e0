"""Runs the embedded demo. See configs/demo.py for the launch command."""

from absl import app, flags
from ml_collections import config_flags

from prompt4trust_jax import demo

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/prompt4trust_demo", "Where outputs go.")


def main(argv):
  del argv
  demo.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
