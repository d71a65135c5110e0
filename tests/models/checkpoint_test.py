"""Checkpoint I/O: hub layout import, Orbax and hub-export round trips, meshes, bad input."""

import json
import os
import shutil

import numpy as np
import pytest
import safetensors.numpy
import torch
from jax.sharding import PartitionSpec as P

from prompt4trust_jax import models, sharding
from prompt4trust_jax.models import hf_weights
from tests import hf_oracle

IDS = np.random.default_rng(0).integers(0, 512, size=(2, 7))


def _logits(model):
  return np.asarray(model(input_ids=IDS))


def test_orbax_round_trip_is_exact(qwen2_dir, tmp_path):
  model = models.from_pretrained(qwen2_dir)
  models.save(model, str(tmp_path / "ckpt"), source_dir=qwen2_dir)
  assert not any(f.endswith(".safetensors") for f in os.listdir(tmp_path / "ckpt"))
  restored = models.from_pretrained(str(tmp_path / "ckpt"))
  np.testing.assert_array_equal(_logits(restored), _logits(model))
  models.load_tokenizer(str(tmp_path / "ckpt"))  # tokenizer files travel with it


def test_hf_export_loads_in_transformers(qwen2_dir, tmp_path):
  model = models.from_pretrained(qwen2_dir)
  models.export_hf(model, str(tmp_path / "hf"))
  reloaded = hf_oracle.load(str(tmp_path / "hf"))
  ref = hf_oracle.logits(hf_oracle.load(qwen2_dir), IDS)
  np.testing.assert_allclose(hf_oracle.logits(reloaded, IDS), ref, rtol=0, atol=1e-5)


def test_sharded_bf16_hub_checkpoint(tmp_path):
  path = hf_oracle.write_qwen2(str(tmp_path), dtype=torch.bfloat16, max_shard_size="100KB")
  assert os.path.exists(os.path.join(path, hf_weights.INDEX_FILE))
  ref = hf_oracle.logits(hf_oracle.load(path, dtype=torch.float32), IDS)
  model = models.from_pretrained(path)
  np.testing.assert_allclose(_logits(model), ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_load_onto_mesh_places_each_parameter(qwen2_dir):
  mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
  model = models.from_pretrained(qwen2_dir, mesh=mesh)
  params = models.flat_params(model)
  assert params["model.layers.0.mlp.up_proj.kernel"].sharding.spec == P("fsdp", "tensor")
  assert params["model.layers.0.mlp.down_proj.kernel"].sharding.spec == P("tensor", "fsdp")
  assert params["model.norm.scale"].sharding.spec == P(None)
  single = models.from_pretrained(qwen2_dir)
  np.testing.assert_allclose(_logits(model), _logits(single), rtol=0, atol=1e-5)


def test_orbax_restores_onto_mesh(qwen2_dir, tmp_path):
  models.save(models.from_pretrained(qwen2_dir), str(tmp_path / "ckpt"), source_dir=qwen2_dir)
  mesh = sharding.make_mesh(fsdp=-1)
  model = models.from_pretrained(str(tmp_path / "ckpt"), mesh=mesh)
  kernel = models.flat_params(model)["model.layers.1.self_attn.q_proj.kernel"]
  assert kernel.sharding.spec == P("fsdp", None) and len(kernel.sharding.device_set) == 8


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def _rewrite_weights(path, edit):
  file = os.path.join(path, "model.safetensors")
  with open(file, "rb") as f:
    tensors = safetensors.numpy.load(f.read())
  edit(tensors)
  safetensors.numpy.save_file(tensors, file, metadata={"format": "pt"})


def test_missing_config_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    models.from_pretrained(str(tmp_path))


def test_unsupported_model_type_is_named(qwen2_dir, tmp_path):
  path = _copy(qwen2_dir, tmp_path / "m")
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  config["model_type"] = "llama"
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match="model_type 'llama'"):
    models.from_pretrained(path)


def test_missing_tensor_fails_before_any_read(qwen2_dir, tmp_path, monkeypatch):
  path = _copy(qwen2_dir, tmp_path / "m")
  _rewrite_weights(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  monkeypatch.setattr(hf_weights.jax, "make_array_from_callback",
                      lambda *a, **k: pytest.fail("read tensors of a bad checkpoint"))
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    models.from_pretrained(path)


def test_misshaped_tensor_fails_before_any_read(qwen2_dir, tmp_path, monkeypatch):
  path = _copy(qwen2_dir, tmp_path / "m")
  def edit(t):
    t["model.norm.weight"] = t["model.norm.weight"][:-1]
  _rewrite_weights(path, edit)
  monkeypatch.setattr(hf_weights.jax, "make_array_from_callback",
                      lambda *a, **k: pytest.fail("read tensors of a bad checkpoint"))
  with pytest.raises(ValueError, match=r"model\.norm\.weight has shape \(63,\), expected \(64,\)"):
    models.from_pretrained(path)


def test_unexpected_tensor_is_named(qwen2_dir, tmp_path):
  path = _copy(qwen2_dir, tmp_path / "m")
  _rewrite_weights(path, lambda t: t.update({"model.layers.9.mlp.up_proj.weight": np.zeros((2, 2),
                                                                                      np.float32)}))
  with pytest.raises(ValueError, match=r"model\.layers\.9\.mlp\.up_proj\.weight"):
    models.from_pretrained(path)


def test_pickle_only_checkpoint_is_refused(qwen2_dir, tmp_path):
  path = _copy(qwen2_dir, tmp_path / "m")
  os.remove(os.path.join(path, "model.safetensors"))
  torch.save({"model.norm.weight": torch.ones(64)}, os.path.join(path, "pytorch_model.bin"))
  with pytest.raises(ValueError, match="pickle"):
    models.from_pretrained(path)


def test_missing_shard_is_named(tmp_path):
  path = hf_oracle.write_qwen2(str(tmp_path), max_shard_size="100KB")
  shard = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[-1]
  os.remove(os.path.join(path, shard))
  with pytest.raises(FileNotFoundError, match=shard):
    models.from_pretrained(path)


def test_tokenizer_from_checkpoint(qwen2_dir, tmp_path):
  from prompt4trust_jax.models.tokenizer import chat_prompt_ids
  tok = models.load_tokenizer(qwen2_dir)
  ids = chat_prompt_ids(tok, "Which modality?")
  assert tok.decode(ids).startswith("<|im_start|>user\nWhich modality?<|im_end|>")
  with pytest.raises(FileNotFoundError, match="tokenizer"):
    models.load_tokenizer(str(tmp_path))
