"""A method's stored answers: one JSON line per item, resumable after a kill.

`RunStore` appends a batch of answers at a time and, reopened, keeps every complete line
(a line cut short is dropped and its batch redone). `check_settings` refuses to mix
answers made under other settings in one workdir.
"""

import json

import numpy as np

from prompt4trust_jax import hosts, run_files


class RunStore:
  """A run's answers, one JSON line per item, appended a batch at a time.

  Only a `writer` store touches the file (process 0 of a multi-host run: every host
  holds every answer, one writes them). `path` may be remote (`run_files`).
  """

  def __init__(self, path, writer: bool = True):
    self.path, self.writer, self.items = run_files.path(str(path)), writer, {}
    if not self.path.exists():
      return
    kept = 0
    with self.path.open("rb") as f:
      for line in f:
        try:
          if not line.endswith(b"\n"):
            raise ValueError("cut short")
          item = json.loads(line)
        except ValueError:
          break  # a line cut short by a kill: it is dropped and its batch redone
        self.items[item["id"]] = item
        kept += len(line)
    if writer:
      run_files.truncate(self.path, kept)

  def done(self, ids) -> bool:
    return all(i in self.items for i in ids)

  def append(self, items: list[dict]):
    if self.writer:
      run_files.append(self.path, "".join(json.dumps(item) + "\n" for item in items))
    self.items.update((item["id"], item) for item in items)

  def first_answers(self, examples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(letter_B, confidence_B, valid_B) of each example's first sample."""
    return tuple(self.arrays(examples, k)[:, 0] for k in ("letters", "confidences", "valid"))

  def option_logits(self, examples) -> np.ndarray:
    """Log option probabilities, floored at log 1e-12 so a 0 stays finite."""
    return np.log(np.maximum(self.arrays(examples, "option_probs")[:, 0], 1e-12))

  def arrays(self, examples, key: str, samples: int | None = None) -> np.ndarray:
    """`key` of each example's stored answer, its first `samples` samples (None: all)."""
    values = [self.items[x["id"]][key] for x in examples]
    return np.asarray([v[:samples] for v in values] if samples else values)


# Settings that change stored answers; the others (methods, metrics) may change on resume.
ANSWER_SETTINGS = ("seed", "prompts", "policy", "downstream", "data", "eval.batch_size",
                    "eval.consistency_samples", "eval.entropy_samples", "eval.entropy_sampling",
                    "eval.sample_temperature", "eval.sample_top_p", "eval.sample_top_k",
                    "eval.sample_repetition_penalty", "eval.sample_max_new_tokens",
                    "eval.sample_image_first", "soft_prompt", "prompt_search")


def check_settings(config, workdir: str):
  """Refuses to resume a workdir whose stored answers came from other settings."""
  settings = {}
  for name in ANSWER_SETTINGS:
    value = config
    for part in name.split("."):
      value = None if value is None else value.get(part)
    settings[name] = value.to_dict() if hasattr(value, "to_dict") else value
  settings = json.loads(json.dumps(settings, default=str))
  path = run_files.path(workdir, "runs", "settings.json")
  if path.exists():
    stored = json.loads(path.read_text())
    changed = sorted(k for k in settings if stored.get(k) != settings[k])
    if changed:
      raise ValueError(f"{workdir} holds answers made with other {changed}; evaluate into a new "
                       "workdir (or delete its runs/ folder to start over).")
  elif hosts.is_writer():
    run_files.replace_text(path, json.dumps(settings, indent=1))
