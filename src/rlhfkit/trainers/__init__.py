"""Thin training loops over `rlhfkit.core`: sft.py (stage 1), reward.py (stage 2)."""
