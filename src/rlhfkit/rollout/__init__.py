"""Generation for PPO: batched sampling with a KV cache, stop-token truncation, response masks."""

from rlhfkit.rollout.sampling import Rollout, SamplingSettings, filter_logits, generate, truncate_after_stop

__all__ = ["Rollout", "SamplingSettings", "filter_logits", "generate", "truncate_after_stop"]
