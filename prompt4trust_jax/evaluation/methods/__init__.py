"""Every confidence method family; importing this package registers them, in the order the
methods are listed (`registry.methods()`). A new baseline: one module here, imported below."""

from prompt4trust_jax.evaluation.methods import direct  # noqa: F401  (first: no_hint, ...)
from prompt4trust_jax.evaluation.methods import consistency  # noqa: F401
from prompt4trust_jax.evaluation.methods import entropy  # noqa: F401
from prompt4trust_jax.evaluation.methods import logit  # noqa: F401
from prompt4trust_jax.evaluation.methods import calibprompt  # noqa: F401
from prompt4trust_jax.evaluation.methods import abstain  # noqa: F401
from prompt4trust_jax.evaluation.methods import prompt_search  # noqa: F401
from prompt4trust_jax.evaluation.methods import rewrite  # noqa: F401
