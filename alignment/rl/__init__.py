"""Learning from preferences and rewards: PPO, DPO, rejection sampling, context distillation."""
