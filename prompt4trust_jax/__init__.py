"""prompt4trust_jax: Prompt4Trust confidence calibration of medical MLLMs in pure JAX."""

__version__ = "0.1.0"
