"""Config sections as dataclasses: one mapping, used by training and evaluation alike."""

import ml_collections

from configs import pmcvqa
from prompt4trust_jax import config_sections
from prompt4trust_jax.training import grpo


def test_named_keys_overrides_and_defaults():
  section = ml_collections.ConfigDict(dict(beta=0.1, kl_estimator=None, micro_batches=8,
                                           aggregation=""))
  loss = config_sections.to_dataclass(grpo.LossConfig, section, max_completion_length=64)
  # micro_batches belongs to the update, not the loss; None and "" keep the defaults.
  assert loss == grpo.LossConfig(beta=0.1, max_completion_length=64)
  assert config_sections.settings_for(grpo.LossConfig, section, beta=0.0) == dict(
      beta=0.0, kl_estimator=None, aggregation="")


def test_the_papers_grpo_section_is_its_loss():
  c = pmcvqa.get_config()
  loss = config_sections.to_dataclass(grpo.LossConfig, c.grpo,
                                      max_completion_length=c.sampling.max_new_tokens)
  assert loss == grpo.LossConfig(epsilon_low=0.2, epsilon_high=0.2, beta=0.04, kl_estimator="k3",
                                 aggregation="bnpo", max_completion_length=512)
