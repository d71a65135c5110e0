"""The embedded default: tiny random models, made on the fly: the policy writes G hints
per question, the downstream VLM answers each with a letter and a confidence.

  python -m experiments.demo --config=configs/demo.py --workdir=/tmp/p4t_demo

Set `--config.policy.path=/path/to/Qwen2.5-1.5B-Instruct` and
`--config.downstream.path=/path/to/Qwen2-VL-2B-Instruct` to use real checkpoints (hub
downloads or converted Orbax directories).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.policy = ml_collections.ConfigDict(dict(
      path="",  # empty: a random checkpoint of `random_shape` is written to the workdir
      random_shape="tiny",
      dtype="float32",
  ))
  # The paper's policy sampling settings, with a short budget for CPU.
  config.sampling = ml_collections.ConfigDict(dict(
      num_generations=4, max_new_tokens=48, temperature=0.6, top_p=0.95, top_k=100))
  config.downstream = ml_collections.ConfigDict(dict(
      path="",  # empty: a random Qwen2-VL of `random_shape` is written to the workdir
      random_shape="tiny",
      dtype="float32",
      # "structured" keeps every answer valid even for a random model.
      mode="structured", temperature=0.1, top_p=0.95,
  ))
  # `image`: a path; empty draws a synthetic one.
  config.questions = [dict(
      image="",
      question="What imaging modality was used to acquire this image?",
      options=["A:CT scan", "B:MRI", "C:X-ray", "D:Ultrasound"])]
  return config
