"""Constrained decoding over a fixed set of allowed completions, for any tokenizer.

Each completion is tokenized on its own and the token sequences go into a prefix tree
(`ChoiceTrie`, root = node 0). A decode loop keeps one node per row: `allowed_logits`
masks every token that is not a child of the row's node, `advance` steps along the
chosen token, and `is_done` says the row has spelled out a whole completion. All three
are pure and jittable, and cost O(B x max_children) rather than a [num_nodes, V] mask.

The set must be prefix-free in tokens, or a row could stop or go on at the same node.
A leaf has no children: rows at a leaf must stop (or be given EOS by the caller), since
`allowed_logits` leaves them no token.
"""

from collections.abc import Sequence
from typing import Protocol

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from prompt4trust_jax import prompts
from prompt4trust_jax.downstream import parsing


class Encoder(Protocol):
  """What `build_trie` needs of a tokenizer (transformers' and tokenizers' both fit)."""

  def encode(self, text: str, add_special_tokens: bool = ...) -> Sequence[int]: ...


@struct.dataclass
class ChoiceTrie:
  child_token: jax.Array  # [num_nodes, max_children] int32, -1 padded
  child_node: jax.Array  # [num_nodes, max_children] int32, -1 padded
  is_leaf: jax.Array  # [num_nodes] bool
  leaf_completion: jax.Array  # [num_nodes] int32: index into the completions, -1 inside
  max_depth: int = struct.field(pytree_node=False)  # tokens in the longest completion


def build_trie(tokenizer: Encoder, completions: Sequence[str]) -> ChoiceTrie:
  """Prefix tree of `tokenizer.encode(c, add_special_tokens=False)` for each completion."""
  if isinstance(completions, str) or not completions:
    raise ValueError(f"completions must be a non-empty list of strings, got {completions!r}.")
  seen = {}
  for i, text in enumerate(completions):
    if text in seen:
      raise ValueError(f"Completion {text!r} is listed twice (indices {seen[text]} and {i}).")
    seen[text] = i
  children: list[dict[int, int]] = [{}]  # per node: token -> child node
  leaf_of: dict[int, int] = {}  # leaf node -> completion index
  max_depth = 0
  for i, text in enumerate(completions):
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if not ids:
      raise ValueError(f"Completion {i} ({text!r}) has no tokens.")
    max_depth = max(max_depth, len(ids))
    node = 0
    for token in ids:
      if node in leaf_of:
        raise ValueError(_collision(completions[leaf_of[node]], text))
      if token not in children[node]:
        children[node][token] = len(children)
        children.append({})
      node = children[node][token]
    if node in leaf_of:
      raise ValueError(f"Completions {completions[leaf_of[node]]!r} and {text!r} tokenize to the "
                       "same ids; drop one.")
    if children[node]:
      raise ValueError(_collision(text, completions[_any_leaf_under(node, children, leaf_of)]))
    leaf_of[node] = i

  num_nodes = len(children)
  max_children = max(len(c) for c in children)
  child_token = np.full((num_nodes, max_children), -1, np.int32)
  child_node = np.full((num_nodes, max_children), -1, np.int32)
  for node, kids in enumerate(children):
    for slot, token in enumerate(sorted(kids)):
      child_token[node, slot], child_node[node, slot] = token, kids[token]
  leaf_completion = np.full((num_nodes,), -1, np.int32)
  for node, i in leaf_of.items():
    leaf_completion[node] = i
  return ChoiceTrie(child_token=jnp.asarray(child_token), child_node=jnp.asarray(child_node),
                    is_leaf=jnp.asarray(leaf_completion >= 0),
                    leaf_completion=jnp.asarray(leaf_completion), max_depth=max_depth)


def _collision(shorter: str, longer: str) -> str:
  return (f"Completion {shorter!r} tokenizes to a strict prefix of {longer!r}, so decoding could "
          "not tell where to stop; end every completion with a terminator (e.g. '.').")


def _any_leaf_under(node: int, children: list[dict[int, int]], leaf_of: dict[int, int]) -> int:
  while node not in leaf_of:
    node = next(iter(children[node].values()))
  return leaf_of[node]


def allowed_logits(trie: ChoiceTrie, node_B: jax.Array, logits_BxV: jax.Array) -> jax.Array:
  """`logits_BxV` with -inf at every token that is not a child of the row's node."""
  token_BxC = trie.child_token[node_B]
  vocab = logits_BxV.shape[-1]
  # Padding slots point past the vocabulary and are dropped, so they cannot clobber token 0.
  safe_BxC = jnp.where(token_BxC >= 0, token_BxC, vocab)
  rows_Bx1 = jnp.arange(logits_BxV.shape[0])[:, None]
  kept_BxC = logits_BxV.at[rows_Bx1, safe_BxC].get(mode="fill", fill_value=-jnp.inf)
  return jnp.full_like(logits_BxV, -jnp.inf).at[rows_Bx1, safe_BxC].set(kept_BxC, mode="drop")


def advance(trie: ChoiceTrie, node_B: jax.Array, token_B: jax.Array) -> jax.Array:
  """The child reached by `token_B`; a token that is not a child (a caller bug) stays put."""
  match_BxC = trie.child_token[node_B] == token_B[:, None]
  slot_B = jnp.argmax(match_BxC, axis=-1)
  next_B = jnp.take_along_axis(trie.child_node[node_B], slot_B[:, None], axis=-1)[:, 0]
  return jnp.where(match_BxC.any(axis=-1), next_B, node_B)


def is_done(trie: ChoiceTrie, node_B: jax.Array) -> jax.Array:
  return trie.is_leaf[node_B]


def completion_of(trie: ChoiceTrie, node: int) -> int:
  """Host side: the index of the completion that ends at leaf `node`."""
  index = int(np.asarray(trie.leaf_completion)[node])
  if index < 0:
    raise ValueError(f"Node {node} is not a leaf; decoding stopped before a completion ended.")
  return index


def first_branch(trie: ChoiceTrie) -> tuple[list[int], int]:
  """Host side: (the tokens every completion starts with, the first node with several
  children; a leaf if none has), walking from the root."""
  child_token, child_node = np.asarray(trie.child_token), np.asarray(trie.child_node)
  node, forced = 0, []
  while (child_token[node] >= 0).sum() == 1:
    forced.append(int(child_token[node, 0]))
    node = int(child_node[node, 0])
  return forced, node


def structured_answer_completions(letters: str = parsing.LETTERS,
                                  max_confidence: int = 100) -> list[str]:
  """`prompts.ANSWER_FORMAT` for every letter and integer confidence 0..max_confidence.

  The final "." also keeps the set prefix-free whatever the tokenizer: Qwen splits digits
  into single tokens, so without it "...confidence 10" would be a prefix of "...confidence 100".
  """
  _check_letters(letters)
  if max_confidence < 0:
    raise ValueError(f"max_confidence must be >= 0, got {max_confidence}.")
  return [prompts.ANSWER_FORMAT.format(LETTER=letter, CONFIDENCE=n)
          for letter in letters for n in range(max_confidence + 1)]


def answer_letter_completions(letters: str = parsing.LETTERS) -> list[str]:
  """Just the committed answer, "In conclusion, the answer is X"; the model goes on freely."""
  _check_letters(letters)
  return [f"In conclusion, the answer is {letter}" for letter in letters]


def _check_letters(letters: str) -> None:
  if not letters or len(set(letters)) != len(letters):
    raise ValueError(f"letters must be distinct characters, got {letters!r}.")
