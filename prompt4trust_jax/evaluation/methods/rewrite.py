"""`rewrite` (under input noise only): the training-free mitigation. The policy rewrites the
noisy question before the downstream sees it; the downstream answers without a hint."""

from prompt4trust_jax.evaluation import registry


@registry.register("rewrite")
class Rewrite(registry.Family):
  noise_methods = ("rewrite",)

  def noise_run(self, method, corruption):
    return registry.Run(f"{method}@{corruption}", family="rewrite", corruption=corruption)

  def needs_policy(self, run, config):
    return True

  def inputs(self, ctx, run, batch):
    texts = ctx.policy.complete([ctx.preset.rewrite(x["question"], x["options"]) for x in batch])
    # An empty rewrite would drop the question: keep the noisy one then.
    return [{**x, "question": t.strip() or x["question"]} for t, x in zip(texts, batch)]

  def score(self, method, stored):
    return stored.first_answers(method)
