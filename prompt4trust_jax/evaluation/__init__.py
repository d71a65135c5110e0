"""Evaluation: the harness (`harness.run`) and the confidence methods registered by name
(`registry`, one module per family under `methods/`)."""

from prompt4trust_jax.evaluation.harness import examples, method_names, plan, run
from prompt4trust_jax.evaluation.registry import Family, Run, Scored, Stored, register

__all__ = ["Family", "Run", "Scored", "Stored", "examples", "method_names", "plan", "register",
           "run"]
