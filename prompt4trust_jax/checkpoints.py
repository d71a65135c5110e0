"""A training run's Orbax checkpoints (`<workdir>/checkpoints/<rollout>`): the loop's state
(policy parameters or LoRA adapters, optimizer state, step, the data iterator) saved and
resumed, and the policy alone loaded into a model or exported as hub safetensors.
"""

import grain
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from prompt4trust_jax import models, run_files, run_models
from prompt4trust_jax.models import lora


def _state(state) -> dict:
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def checkpoint_dir(workdir: str) -> epath.Path:
  """`<workdir>/checkpoints`, absolute (Orbax needs it so); a remote workdir (`gs://...`)
  stays the URL it is."""
  return run_files.path(workdir, "checkpoints")


def manager(workdir: str, keep: int | None = None) -> ocp.CheckpointManager:
  """The run's checkpoint manager (keeping the latest `keep`; None: all)."""
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                                    create=True))


def load_policy(workdir: str, policy: nnx.Module, step: int | None = None) -> int:
  """Puts the policy parameters a training run saved at `step` (default: latest) into `policy`.

  `policy` is the model the run started from (`run_models.policy_model` with the run's
  policy section: same dtypes, same LoRA adapters); its arrays keep their shardings.
  Returns the step restored.
  """
  checkpoints = manager(workdir)
  step = checkpoints.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train first or pass the "
                            "training run's workdir.")
  target = {"params": nnx.state(policy, lora.trainable(policy))}  # LoRA: the adapters
  restored = checkpoints.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)))  # the params only, not the optimizer state
  nnx.update(policy, restored["state"]["params"])
  return step


def export_policy(config: ml_collections.ConfigDict, workdir: str, out_dir: str,
                  step: int | None = None, dtype: str | None = None) -> int:
  """Writes the policy a training run saved at `step` (default: latest) as a hub-layout
  safetensors directory (LoRA adapters merged), with the base checkpoint's tokenizer and
  config files. Returns the step exported."""
  policy, _, _, path = run_models.policy_model(config.policy, config.seed)
  step = load_policy(workdir, policy, step)
  models.export_hf(policy, out_dir, source_dir=path, dtype=dtype)
  return step


def save(checkpoints: ocp.CheckpointManager, rollout: int, state, batches) -> None:
  """The train state and the Grain iterator `batches` after `rollout` rollouts."""
  checkpoints.save(rollout, args=ocp.args.Composite(
      state=ocp.args.StandardSave(_state(state)), data=grain.checkpoint.CheckpointSave(batches)))


def restore(checkpoints: ocp.CheckpointManager, rollout: int, state, batches):
  """`state` (its shardings kept) and `batches` as saved after `rollout` rollouts."""
  restored = checkpoints.restore(rollout, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_state(state)),
      data=grain.checkpoint.CheckpointRestore(batches)))
  return state.replace(**restored["state"])
