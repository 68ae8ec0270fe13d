"""Generation behind one interface: unpadded prompts in, a `Rollout` out, weights synced after each update.
`LocalSampler` (the in-process KV-cached sampler) is the first engine."""

from rlhfkit.rollout.engine import LocalSampler, RolloutEngine, stop_token_ids
from rlhfkit.rollout.sampling import (
    Rollout,
    SamplingSettings,
    filter_logits,
    generate,
    truncate_after_stop,
    widen,
)

__all__ = [
    "LocalSampler",
    "Rollout",
    "RolloutEngine",
    "SamplingSettings",
    "filter_logits",
    "generate",
    "stop_token_ids",
    "truncate_after_stop",
    "widen",
]
