"""rlhfkit: RLHF the InstructGPT way (SFT, reward model, PPO) that runs on a CPU laptop and can be checked.

Importing the package is cheap: the heavy dependencies (transformers, datasets, accelerate) are imported
by the modules that use them, and `rlhfkit.core` needs torch only.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # The Python API, imported on first use so that `import rlhfkit` stays light.
    if name == "sft":
        from rlhfkit.trainers.sft import sft

        return sft
    if name == "train_reward_model":
        from rlhfkit.trainers.reward import train_reward_model

        return train_reward_model
    if name == "ppo":
        from rlhfkit.trainers.ppo import ppo

        return ppo
    raise AttributeError(f"module 'rlhfkit' has no attribute {name!r}")
