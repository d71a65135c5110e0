"""Prepared splits read back with `tfds.data_source` and fed through Grain.

An example, as the rest of the library takes it, is a dict with `id` (str), `question`
(str), `options` (tuple of option lines as shown to the model), `answer` (int index) and
`image` (a decoded RGB PIL image, or None for text-only data).

`batches` is a Grain pipeline (shuffle, reshuffled every epoch -> repeat -> batch -> this
host's part of each batch -> decode) whose iterator state (`get_state`/`set_state`, or
`grain.checkpoint.CheckpointSave` inside an Orbax checkpoint) resumes it exactly.
"""

import os
from collections.abc import Sequence

import grain
import tensorflow_datasets as tfds

from prompt4trust_jax import console, hosts
from prompt4trust_jax.data import medmcqa, pmc_vqa
from prompt4trust_jax.downstream import images

# The committed synthetic PMC-VQA copy (CSV + PNG scans) used by tests and the CPU demo.
FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixture", "pmc_vqa_tiny")
# A committed synthetic MedMCQA copy (train.json, dev.json) for configs/medmcqa.py's demo.
MEDMCQA_FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixture", "medmcqa_tiny")
BUILDERS = {pmc_vqa.PmcVqa.name: pmc_vqa.PmcVqa, medmcqa.Medmcqa.name: medmcqa.Medmcqa}
# How each data set labels its options (the answer letters the downstream is asked for).
LABELS = {pmc_vqa.PmcVqa.name: pmc_vqa.LETTERS, medmcqa.Medmcqa.name: medmcqa.NUMBERS}


def letters(name: str) -> str:
  """The option labels of data set `name` ("pmc_vqa/paper" -> "ABCD", "medmcqa" -> "1234")."""
  builder_name = name.split("/")[0]
  if builder_name not in LABELS:
    raise ValueError(f"Unknown data set {name!r}; choose from {sorted(LABELS)}.")
  return LABELS[builder_name]


def source(name: str, split: str, data_dir: str, manual_dir: str | None = None,
           strict: bool = False) -> Sequence[dict]:
  """The records of `name` (e.g. "pmc_vqa/paper") `split`, preparing the data set on first use.

  `manual_dir` holds the downloaded files (see each builder); preparing checks every row
  (skip report or `strict` failure) and writes array_record files under `data_dir`.
  Images stay encoded in the records; `decode` decodes them.
  """
  builder_name = name.split("/")[0]
  if builder_name not in BUILDERS:
    raise ValueError(f"Unknown data set {name!r}; choose from {sorted(BUILDERS)} "
                     "(with a config, e.g. 'pmc_vqa/paper').")
  decoders = {"image": tfds.decode.SkipDecoding()} if builder_name == "pmc_vqa" else None
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  def read():
    with console.preparing(f"data {name}"):
      return tfds.data_source(
          name, split=split, data_dir=data_dir, decoders=decoders,
          builder_kwargs={"strict": strict, "file_format": "array_record"},
          download_and_prepare_kwargs={"download_config": download_config})

  return hosts.prepared_once(read, f"tfds {name} {split}")


def configured_source(data_config, split: str, workdir: str) -> Sequence[dict]:
  """`source` from a config's `data` section (name, data_dir, manual_dir, strict);
  data_dir defaults to `<workdir>/tfds`."""
  d = data_config
  return source(d.name, split, data_dir=d.data_dir or os.path.join(workdir, "tfds"),
                manual_dir=d.manual_dir or None, strict=d.get("strict", False))


def decode(record: dict) -> dict:
  """A stored record -> an example (text as str, the image decoded to RGB)."""
  text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else v
  image = record.get("image")
  return {"id": text(record["id"]), "question": text(record["question"]),
          "options": tuple(text(o) for o in record["options"]), "answer": int(record["answer"]),
          "image": None if image is None else images.load_image(image)}


def batches(records: Sequence[dict], batch_size: int, seed: int, *, shuffle: bool = True,
            num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1,
            drop_remainder: bool = True, num_threads: int = 4) -> grain.IterDataset:
  """Lists of decoded examples, this shard's part of every global batch of `batch_size`;
  `num_epochs=None` repeats forever.

  A host of a multi-host run passes its `jax.process_index()` / `jax.process_count()` as the
  shard and gets `batch_size / shard_count` examples of each global batch: shard i's part of
  batch k is examples [i * b, (i + 1) * b) of it (b = batch_size / shard_count), so the
  shards' parts, in shard order, are the batch one host alone would read (the same order for
  any number of hosts), and a host reads and decodes only its own records. Records that are
  already examples (e.g. an in-memory list) pass through `decode` unchanged.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  if batch_size % shard_count:
    raise ValueError(f"A global batch of {batch_size} does not split over {shard_count} hosts; "
                     "make questions_per_step a multiple of the process count.")
  if len(records) == 0:
    raise ValueError("The split has no records.")
  ds = grain.MapDataset.source(records)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  part = batch_size // shard_count
  ds = ds.repeat(num_epochs).batch(part, drop_remainder=drop_remainder, batch_fn=list)
  if shard_count > 1:  # the parts of global batch k are parts k * shard_count + 0, 1, ...
    ds = ds[:len(ds) - len(ds) % shard_count][shard_index::shard_count]
  ds = ds.map(lambda rows: [decode(r) for r in rows])
  # A few batches decoded ahead, not Grain's default 500 (of decoded images, over many epochs).
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=2 * num_threads))
