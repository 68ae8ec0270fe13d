"""`rlhfkit dpo`: direct preference optimisation, offline on preference pairs or online on the policy's own
samples scored by `ppo`'s reward components. The loss is `rlhfkit.core.dpo_loss`."""

from __future__ import annotations

from pathlib import Path

from rlhfkit.config.dpo import DPOConfig


def dpo(config: DPOConfig) -> Path:
    """Run DPO (online when `config.prompts` is set); returns the output folder, a causal-LM folder."""
    if config.online:
        from rlhfkit.algorithms.dpo.online import online_dpo

        return online_dpo(config)
    from rlhfkit.algorithms.dpo.offline import offline_dpo

    return offline_dpo(config)


__all__ = ["DPOConfig", "dpo"]
