"""rlhfkit: RLHF the InstructGPT way (SFT, reward model, PPO) that runs on a CPU laptop and can be checked.

Importing the package is cheap: the heavy dependencies (transformers, datasets, accelerate) are imported
by the modules that use them, and `rlhfkit.core` needs torch only.
"""

__version__ = "0.1.0"
