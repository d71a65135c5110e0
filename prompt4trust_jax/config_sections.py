"""Config sections (`ml_collections.ConfigDict`) as the library's frozen dataclasses."""

import dataclasses


def settings_for(cls, section, **overrides) -> dict:
  """The keys of `section`, then `overrides`, named like `cls`'s fields (others belong to
  other parts of the run and are left out)."""
  names = {f.name for f in dataclasses.fields(cls)}
  return {k: v for k, v in {**dict(section), **overrides}.items() if k in names}


def to_dataclass(cls, section, **overrides):
  """`cls(**settings_for(...))`, where a None or "" setting keeps the field's default."""
  settings = settings_for(cls, section, **overrides)
  return cls(**{k: v for k, v in settings.items() if v is not None and v != ""})
