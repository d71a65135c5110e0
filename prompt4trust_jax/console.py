"""What a launched run prints: a few lines of its own, one per step, from process 0.

The launchers call `quiet_libraries()` (their `--verbosity` / `-v` flag given: left as it
is): absl INFO records (Orbax writes a dictionary of options at every save), TFDS' progress
bars and preparation messages and transformers' warnings stay out of the default output.
A program importing the library keeps its own logging untouched.
"""

import contextlib
import io

from absl import logging

from prompt4trust_jax import hosts

_QUIET = False


def quiet_libraries() -> None:
  global _QUIET
  _QUIET = True
  logging.set_verbosity(logging.WARNING)
  import tensorflow_datasets as tfds
  import transformers
  tfds.disable_progress_bar()
  transformers.logging.set_verbosity_error()


def say(line: str) -> None:
  """Prints `line` on process 0 (every host holds the same reduced metrics)."""
  if hosts.is_writer():
    print(line, flush=True)


@contextlib.contextmanager
def preparing(what: str):
  """Around a data set's first read: when quiet, TFDS' own messages are held back and one
  line says where it was prepared."""
  if not _QUIET:
    yield
    return
  held, level = io.StringIO(), logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # TFDS warns of the folder it is about to fill
  try:
    with contextlib.redirect_stdout(held):
      yield
  finally:
    logging.set_verbosity(level)
  if "prepared to" in held.getvalue():  # by this host (in a multi-host run, process 0)
    print(f"{what}: prepared to {held.getvalue().split('prepared to ')[1].split('. ')[0]}",
          flush=True)
