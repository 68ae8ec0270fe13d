"""Stage 3: PPO with four roles — actor and critic (trained, one module), reference and reward model (frozen)."""

from rlhfkit.algorithms.ppo.trainer import ppo

__all__ = ["ppo"]
