"""Stage 3: PPO with four roles — actor and critic (trained, one module), reference and reward model (frozen).

`ppo(config)` runs it; `PPOTrainer.create(config)` gives the steps one by one (prompt_batch, rollout,
experience, update), for tests and for users who drive the loop themselves.
"""

from rlhfkit.algorithms.ppo.experience import Experience
from rlhfkit.algorithms.ppo.trainer import PPOTrainer, ppo

__all__ = ["Experience", "PPOTrainer", "ppo"]
