"""Training: one GRPO step's data (`rollout`: prompts -> hints -> answers -> rewards -> the
update batch), the rewards, the GRPO loss (`grpo`), log-probs and the frozen reference, the
jitted sharded update (`update`) and the loop (`train`: checkpoints and logs)."""
