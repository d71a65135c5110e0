"""Workdir files, local and (the rewrite path of object stores) remote."""

import pytest

from prompt4trust_jax import run_files


@pytest.fixture(params=["local", "remote"])
def remote(request, monkeypatch):
  if request.param == "remote":  # a local folder through the object-store branches
    monkeypatch.setattr(run_files, "is_remote", lambda p: True)
  return request.param == "remote"


def test_append_truncate_and_replace(tmp_path, remote):
  path = run_files.path(str(tmp_path), "runs.jsonl")
  run_files.append(path, "a\n")
  run_files.append(path, "bc\n")
  assert path.read_text() == "a\nbc\n"
  run_files.truncate(path, 2)
  assert path.read_text() == "a\n"
  run_files.replace_text(path, "whole")
  assert path.read_text() == "whole"
  assert sorted(p.name for p in path.parent.iterdir()) == ["runs.jsonl"]  # no temporary left


def test_paths_are_absolute_locally_and_urls_stay_urls(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(run_files.path("run", "metrics.jsonl")) == str(tmp_path / "run" / "metrics.jsonl")
  # os.path.abspath("gs://b/run") would be "<cwd>/gs:/b/run", a local folder.
  assert str(run_files.path("gs://bucket/run", "runs", "x.jsonl")) == "gs://bucket/run/runs/x.jsonl"
