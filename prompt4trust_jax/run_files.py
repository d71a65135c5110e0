"""The files a run writes in its workdir, local or remote (`gs://...`, through `etils.epath`).

A multi-host run's workdir is shared by its hosts (a network folder or a bucket): process 0
writes what is written once, every host reads. Object stores cannot append or truncate a
file in place, so there those are a rewrite of the whole (small) file.
"""

import os

from etils import epath


def path(workdir: str, *parts: str) -> epath.Path:
  """`workdir/parts...`; a local workdir absolute (Orbax needs it so), a URL kept one."""
  root = epath.Path(workdir)
  root = root if is_remote(workdir) else root.absolute()
  return root.joinpath(*parts)


def is_remote(p) -> bool:
  return "://" in str(p)


def append(p: epath.Path, text: str) -> None:
  """Appends `text` to the file at `p` (made if absent); on local disk, synced to it before
  returning, so a kill right after loses nothing appended."""
  if is_remote(p):
    p.write_text((p.read_text() if p.exists() else "") + text)
    return
  with open(os.fspath(p), "a") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def truncate(p: epath.Path, size: int) -> None:
  """Keeps the first `size` bytes of the file at `p`."""
  if is_remote(p):
    p.write_bytes(p.read_bytes()[:size])
  else:
    os.truncate(os.fspath(p), size)


def replace_text(p: epath.Path, text: str) -> None:
  """Writes `text` to `p` whole: a reader never sees half of it (a local temporary file
  renamed; an object store writes objects whole)."""
  if is_remote(p):
    p.write_text(text)
    return
  tmp = p.with_name(p.name + ".tmp")
  tmp.write_text(text)
  os.replace(os.fspath(tmp), os.fspath(p))
