"""Multi-turn episodes: the user's environment run around the sampler (docs/multiturn.md).

An environment is a class named `module:Class`, one object per episode:

    Class(row)          the prompt's data row (every column)
    reset()             optional: the opening, text or messages; absent or None = the row's prompt
    step(response)      the policy's turn as text, its stop token stripped -> (what the environment says
                        next: text, messages or None to end; this turn's reward). `async def` is awaited.

The context is kept as tokens and only ever grows: the opening's ids, then each policy turn exactly as it was
sampled (its stop token included), then the environment's answer — text as
`tokenizer(text, add_special_tokens=False)`, messages as the chat template renders them after an assistant
turn (`TemplateDelta`) — and so on. Text the policy sampled is never decoded and encoded again, so the
tokens trained on are the tokens sampled (the tokenisation bugs of other frameworks' multi-turn training).
The episode becomes a `Rollout` whose "response" is everything after the opening and whose `policy_mask`
marks the policy's tokens: every loss, KL and advantage covers those alone.
"""

from rlhfkit.rollout.environments.chat import TemplateDelta, check_template
from rlhfkit.rollout.environments.episodes import (
    ENDINGS,
    Episode,
    EpisodeRunner,
    episode_stats,
    episode_turns,
)
from rlhfkit.rollout.environments.interface import (
    Environment,
    EnvironmentFailure,
    check_environment,
    load_environment,
    opening_ids,
)

__all__ = [
    "ENDINGS",
    "Environment",
    "EnvironmentFailure",
    "Episode",
    "EpisodeRunner",
    "TemplateDelta",
    "check_environment",
    "check_template",
    "episode_stats",
    "episode_turns",
    "load_environment",
    "opening_ids",
]
