"""The downstream's own answer and confidence: no hint, a fixed hint, or Prompt4Trust's.

- `no_hint`, `fixed_hint`: the downstream's answer in the configured mode, without a hint
  or with the preset's fixed one.
- `prompt4trust`: the same with the policy's greedy hint (a trained checkpoint; the policy
  may be paired with a different downstream than it was trained with).
Under noise, `no_hint` and `prompt4trust` run again on corrupted inputs; Prompt4Trust's hint
is then written from the noisy question, as a deployed policy would see it.
"""

from prompt4trust_jax.evaluation import registry

_HINT = {"no_hint": "none", "fixed_hint": "fixed", "prompt4trust": "policy"}


@registry.register("direct")
class Direct(registry.Family):
  methods = ("no_hint", "fixed_hint", "prompt4trust")
  noise_methods = ("no_hint", "prompt4trust")

  def runs(self, methods, settings):
    return [registry.Run(m, hint=_HINT[m]) for m in methods]

  def noise_run(self, method, corruption):
    return registry.Run(f"{method}@{corruption}", hint=_HINT[method], corruption=corruption)

  def elicitation(self, ctx, run):
    # The "reference" preset puts the fixed sentence in the instruction ("clean": the hint).
    return {"instruction": ctx.preset.fixed_hint_setting()[0]} if run.hint == "fixed" else {}

  def score(self, method, stored):
    return stored.first_answers(method)
