"""Test setup: 8 fake CPU devices (set before JAX starts) and hub-layout checkpoints.

Checkpoints are written by `transformers` itself (the oracle) from random weights,
so loading them exercises exactly the layout users download.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
# One persistent compilation cache for the suite, shared by both xdist workers and by the
# launcher subprocesses some tests start (they inherit the environment): a program one of
# them compiled is loaded by the others. Entries are keyed by program, flags and devices.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"prompt4trust_jax_test_cache_{os.getuid()}"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

from prompt4trust_jax import host_memory  # noqa: E402

# As the launchers do: XLA:CPU and torch reuse freed buffers instead of page-faulting
# fresh ones in on every call (see host_memory.py); before JAX or torch start threads.
host_memory.retain_freed_memory()

from tests import hf_oracle  # noqa: E402


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
  """A small untied Qwen2 checkpoint written by transformers, with a tokenizer."""
  return hf_oracle.write_qwen2(str(tmp_path_factory.mktemp("qwen2")), tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
  """The library's own random tiny checkpoint (as the demo makes it)."""
  from prompt4trust_jax import fixtures
  return fixtures.write_random_qwen2(str(tmp_path_factory.mktemp("tiny")),
                                     fixtures.shape_config("tiny"))


@pytest.fixture(scope="session")
def realistic_policy_dir(tmp_path_factory):
  """Qwen2.5-1.5B-Instruct's real tokenizer, template and config files, tiny random weights."""
  from tests import realistic
  return realistic.write_policy(str(tmp_path_factory.mktemp("realistic_policy")))


@pytest.fixture(scope="session")
def realistic_vl_dir(tmp_path_factory):
  """Qwen2-VL-2B-Instruct's real tokenizer, templates and processor files, tiny random weights."""
  from tests import realistic
  return realistic.write_downstream(str(tmp_path_factory.mktemp("realistic_vl")))
