"""`calibprompt`: `logit` with soft prompt embeddings learnt on labelled examples.

The soft prompt (`soft_prompt.py`, settings in `config.soft_prompt`) is learnt once per
evaluation, on `soft_prompt.num_train_examples` of `soft_prompt.train_split`, and kept in
the workdir; the option probabilities are then read under it.
"""

from prompt4trust_jax.evaluation import soft_prompt
from prompt4trust_jax.evaluation import registry


@registry.register("calibprompt")
class CalibPrompt(registry.Family):
  methods = ("calibprompt",)

  def runs(self, methods, settings):
    return [registry.Run("calibprompt", family="calibprompt", mode="logit")]

  def answer(self, ctx, run, answerer, batch, hints, key):
    return soft_prompt.answer(answerer, ctx.memo("soft_prompt", lambda: _learn(ctx, run)), batch,
                              len(batch))

  def score(self, method, stored):
    return stored.first_answers(method)


def _learn(ctx, run):
  c = ctx.config.soft_prompt
  examples = ctx.examples(c.train_split, c.num_train_examples)
  settings = soft_prompt.SoftPromptConfig(**{
      k: v for k, v in c.items() if k not in ("train_split", "num_train_examples")})
  return soft_prompt.train(ctx.answerer_for(run), examples, settings, mesh=ctx.mesh,
                           workdir=ctx.workdir)
