"""rlhfkit: RLHF the InstructGPT way (SFT, reward model, PPO) that runs on a CPU laptop and can be checked.

Importing the package is cheap: the heavy dependencies (transformers, datasets, accelerate) are imported
by the modules that use them, and `rlhfkit.core` needs torch only.
"""

__version__ = "0.1.0"


# The Python API, imported on first use so that `import rlhfkit` stays light.
_API = {
    "sft": "rlhfkit.algorithms.sft",
    "train_reward_model": "rlhfkit.algorithms.reward",
    "ppo": "rlhfkit.algorithms.ppo.trainer",
    "dpo": "rlhfkit.algorithms.dpo",
    "label": "rlhfkit.jobs.label",
    "evaluate": "rlhfkit.jobs.evaluate",
    "demo": "rlhfkit.jobs.demo",
    "demo_multiturn": "rlhfkit.jobs.multiturn",
    "batched": "rlhfkit.tasks.rewards",  # marks a reward function as batched
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'rlhfkit' has no attribute {name!r}")
