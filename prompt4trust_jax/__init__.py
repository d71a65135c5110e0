"""prompt4trust_jax: Prompt4Trust confidence calibration of medical MLLMs in pure JAX.

Axis letters, one meaning each across the package, in array names (`logits_BxNxV`) and
einsum strings (lower case):

  A attention (query) heads       M rows of a flattened batch (tokens of all rows, or all
  B rows of a batch                 images' merged tokens)
  C options of a question         N completion tokens of a row
  D model width                   O a question's other samples (all but the first)
  E values per image patch        P prompt (prefix) tokens, a soft prompt's included
  F MLP width                     Q questions (prompt rows; a group's shared prefix)
  G rows of a group: a question's R query heads per key/value head (A = K x R)
    completions, samples or       S key/value slots of a cache
    copies sharing a prefix       T tokens of one call
  H head dim                      U entries of one block (queries, positions, chunk tokens)
  I images                        V vocabulary
  J patches of an image           W vision tower width
  K key/value heads               X blocks (of U entries)
  L a row's length (P + N)        Y kept candidates (top-k)
                                  Z calibration bins
"""

__version__ = "0.1.0"
