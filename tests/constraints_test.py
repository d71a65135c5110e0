"""Choice tries: structure, collision errors, masking and jitted walks, on the test tokenizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt4trust_jax import fixtures
from prompt4trust_jax.downstream import constraints, parsing


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return fixtures.write_tokenizer(str(tmp_path_factory.mktemp("tok")), 4096)


@pytest.fixture(scope="module")
def structured(tok):
  completions = constraints.structured_answer_completions()
  return completions, constraints.build_trie(tok, completions)


class _TableTokenizer:
  """Fixed ids per string, to place token 0 and padding where the masking test needs them."""

  def __init__(self, table):
    self.table = table

  def encode(self, text, add_special_tokens=True):
    return self.table[text]


def _ids(tok, text):
  return tok.encode(text, add_special_tokens=False)


def _leaf_paths(trie):
  """Token path from the root to every leaf, read back from the arrays alone."""
  child_token, child_node = np.asarray(trie.child_token), np.asarray(trie.child_node)
  paths, stack = {}, [(0, [])]
  while stack:
    node, path = stack.pop()
    if trie.is_leaf[node]:
      paths[node] = path
    for token, child in zip(child_token[node], child_node[node]):
      if token >= 0:
        stack.append((int(child), path + [int(token)]))
  return paths


def test_completion_lists():
  completions = constraints.structured_answer_completions()
  assert len(completions) == 404 and len(set(completions)) == 404
  assert completions[0] == "In conclusion, the answer is A with confidence 0."
  assert completions[-1] == "In conclusion, the answer is D with confidence 100."
  assert constraints.answer_letter_completions("AB") == ["In conclusion, the answer is A",
                                                         "In conclusion, the answer is B"]
  # What the decoder is allowed to say is what the paper parser reads back.
  for i, text in enumerate(completions):
    assert parsing.parse(text) == parsing.Parsed("ABCD"[i // 101], (i % 101) / 100, True)


def test_trie_shape_matches_the_token_prefixes(tok, structured):
  completions, trie = structured
  sequences = [tuple(_ids(tok, c)) for c in completions]
  prefixes = {s[:k] for s in sequences for k in range(1, len(s) + 1)}
  branching = {}
  for p in prefixes:
    branching.setdefault(p[:-1], set()).add(p[-1])
  assert trie.child_token.shape == (1 + len(prefixes), max(len(b) for b in branching.values()))
  assert trie.child_node.shape == trie.child_token.shape
  assert trie.child_token.dtype == trie.child_node.dtype == trie.leaf_completion.dtype == jnp.int32
  assert trie.is_leaf.shape == trie.leaf_completion.shape == (1 + len(prefixes),)
  assert sorted(np.asarray(trie.leaf_completion)[np.asarray(trie.is_leaf)]) == list(range(404))
  assert np.all(np.asarray(trie.leaf_completion)[~np.asarray(trie.is_leaf)] == -1)
  assert trie.max_depth == max(len(s) for s in sequences)
  # Leaves have no children; inner nodes have at least one.
  has_child = (np.asarray(trie.child_token) >= 0).any(axis=1)
  np.testing.assert_array_equal(has_child, ~np.asarray(trie.is_leaf))


def test_leaf_paths_decode_to_the_completions(tok, structured):
  completions, trie = structured
  paths = _leaf_paths(trie)
  assert len(paths) == 404
  for node, path in paths.items():
    assert tok.decode(path) == completions[constraints.completion_of(trie, node)]


def test_letter_only_completions_build(tok):
  completions = constraints.answer_letter_completions()
  trie = constraints.build_trie(tok, completions)
  assert int(trie.is_leaf.sum()) == 4
  for node, path in _leaf_paths(trie).items():
    assert tok.decode(path) == completions[constraints.completion_of(trie, node)]


@pytest.mark.parametrize("completions", [
    ["In conclusion, the answer is B with confidence 10",
     "In conclusion, the answer is B with confidence 100"],
    ["In conclusion, the answer is B with confidence 100",
     "In conclusion, the answer is B with confidence 10"],
])
def test_prefix_collision_is_refused_in_either_order(tok, completions):
  with pytest.raises(ValueError, match="strict prefix"):
    constraints.build_trie(tok, completions)


def test_bad_completion_lists_are_refused(tok):
  with pytest.raises(ValueError, match="non-empty"):
    constraints.build_trie(tok, [])
  with pytest.raises(ValueError, match="listed twice"):
    constraints.build_trie(tok, ["yes.", "no.", "yes."])
  with pytest.raises(ValueError, match="no tokens"):
    constraints.build_trie(tok, ["yes.", ""])
  with pytest.raises(ValueError, match="same ids"):
    constraints.build_trie(_TableTokenizer({"x": [1, 2], "y": [1, 2]}), ["x", "y"])


def test_allowed_logits_keeps_exactly_the_children():
  # Node "4" has token 0 among its children and a padding slot: padding must not clobber it.
  table = {"a": [0, 5], "b": [0, 6], "c": [3], "e": [4, 0, 1], "f": [4, 7, 1], "g": [4, 2, 1]}
  table.update({f"h{x}": [8, x] for x in range(1, 5)})
  trie = constraints.build_trie(_TableTokenizer(table), list(table))
  num_nodes = trie.child_token.shape[0]
  node_B = jnp.arange(num_nodes)
  logits_BxV = jax.random.normal(jax.random.key(0), (num_nodes, 10))
  out = np.asarray(jax.jit(constraints.allowed_logits)(trie, node_B, logits_BxV))
  child_token = np.asarray(trie.child_token)
  for node in range(num_nodes):
    children = sorted(t for t in child_token[node] if t >= 0)
    assert np.flatnonzero(np.isfinite(out[node])).tolist() == children
    np.testing.assert_array_equal(out[node, children], np.asarray(logits_BxV)[node, children])
  four = int(trie.child_node[0][list(child_token[0]).index(4)])
  assert sorted(child_token[four].tolist()) == [-1, 0, 2, 7]


def test_advance_follows_children_and_ignores_strangers():
  table = {"a": [0, 5], "b": [0, 6], "c": [3]}
  trie = constraints.build_trie(_TableTokenizer(table), list(table))
  node = constraints.advance(trie, jnp.array([0, 0, 0]), jnp.array([0, 3, 9]))
  assert not bool(trie.is_leaf[node[0]]) and bool(trie.is_leaf[node[1]]) and int(node[2]) == 0
  node = constraints.advance(trie, node[:1], jnp.array([6]))
  assert constraints.completion_of(trie, int(node[0])) == 1
  with pytest.raises(ValueError, match="not a leaf"):
    constraints.completion_of(trie, 0)


@jax.jit
def _greedy_walk(trie, key):
  """Greedy decoding under the trie with random logits; -1 once a row is done."""

  def step(node_B, key):
    logits_BxV = jax.random.normal(key, (node_B.shape[0], 1024)) * 4
    token_B = jnp.argmax(constraints.allowed_logits(trie, node_B, logits_BxV), axis=-1)
    done_B = constraints.is_done(trie, node_B)
    return (jnp.where(done_B, node_B, constraints.advance(trie, node_B, token_B)),
            jnp.where(done_B, -1, token_B))

  node_B, tokens_TxB = jax.lax.scan(step, jnp.zeros(64, jnp.int32),
                                    jax.random.split(key, trie.max_depth))
  return node_B, tokens_TxB.T


def test_greedy_walks_under_jit_spell_out_exactly_one_completion(tok, structured):
  completions, trie = structured
  assert len(tok) <= 1024  # the walk's vocabulary
  sequences = {tuple(_ids(tok, c)): i for i, c in enumerate(completions)}
  reached = set()
  for seed in range(3):
    node_B, tokens_BxT = map(np.asarray, _greedy_walk(trie, jax.random.key(seed)))
    assert np.all(np.asarray(trie.is_leaf)[node_B])
    for node, tokens in zip(node_B, tokens_BxT):
      emitted = tuple(int(t) for t in tokens if t >= 0)
      assert np.all(tokens[len(emitted):] == -1)  # nothing after the end
      assert sequences.get(emitted) == constraints.completion_of(trie, int(node))
      reached.add(emitted)
  assert len(reached) > 50  # the random walks really explore the tree
