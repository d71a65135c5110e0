"""The instruction search: ranking by accuracy bucket then ECE, rounds, parents, no re-scoring."""

import math

import pytest

from prompt4trust_jax.evaluation.methods import prompt_search


def test_rank_key_prefers_accuracy_buckets_then_lower_ece():
  # 0.62 and 0.64 share the 0.60 bucket (width 0.05): the lower ECE wins between them;
  # 0.66 is in a higher bucket and beats both whatever its ECE.
  order = sorted([(0.62, 0.05), (0.64, 0.20), (0.66, 0.40)],
                 key=lambda c: prompt_search.rank_key(*c, bucket=0.05))
  assert order == [(0.66, 0.40), (0.62, 0.05), (0.64, 0.20)]
  assert prompt_search.rank_key(0.5, math.nan) > prompt_search.rank_key(0.5, 0.9)


def test_search_keeps_the_top_k_as_parents_and_scores_each_instruction_once():
  scores = {"seed": (0.50, 0.30), "a": (0.70, 0.20), "b": (0.70, 0.10), "c": (0.40, 0.01),
            "d": (0.72, 0.05), "e": (0.30, 0.50)}
  proposals = {1: ["a", "b", "c", " a ", ""], 2: ["d", "e", "b"]}
  seen_parents, scored = [], []

  def propose(parents, n, round_index):
    seen_parents.append([p.instruction for p in parents])
    assert n == 3
    return proposals[round_index]

  def score(text):
    scored.append(text)
    return scores[text]

  ranked = prompt_search.search(propose, score, ["seed"], rounds=2, per_round=3, top_k=2)
  assert seen_parents == [["seed"], ["b", "a"]]  # round 2 builds on the two best of round 1
  assert sorted(scored) == sorted(scores)  # duplicates, padding and empties never re-scored
  assert [c.instruction for c in ranked] == ["d", "b", "a", "seed", "c", "e"]
  assert ranked[0].round == 2 and ranked[0].accuracy == 0.72


def test_meta_prompt_lists_parents_with_scores():
  text = prompt_search.meta_prompt([prompt_search.Candidate("Be careful.", 0.5, 0.25, 0)])
  assert "Be careful." in text and "accuracy 0.500, ECE 0.250" in text
  assert text.endswith("New instruction:")


def test_bad_search_settings_are_refused():
  with pytest.raises(ValueError, match="per_round >= 1"):
    prompt_search.search(lambda *a: [], lambda t: (0, 0), ["x"], rounds=1, per_round=0, top_k=1)
