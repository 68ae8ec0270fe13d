"""Step 4 of a PPO iteration: the score of each episode, the weighted sum of its reward components — the
reward model (in its own tokens when its tokenizer differs from the policy's) and the user's reward functions
(`rlhfkit.tasks.rewards`) on the prompt, the response as text and the prompt's data row.

Each piece reads alone: `episodes` (the rows episodes carry, their text), `model` (the RM's scores, shared
or re-encoded), `functions` (the user's calls, the processes' agreement on their failure, the gather),
`scale` (the RM's normalisation, the critic's scale), `mixture` (the components by name, their weights).
"""

from rlhfkit.algorithms.ppo.rewards.episodes import Episodes, EpisodeTexts, with_rows
from rlhfkit.algorithms.ppo.rewards.mixture import Rewards, component_stats, describe, load_rewards
from rlhfkit.algorithms.ppo.rewards.scale import RM, Normalise, critic_scale, reward_normaliser

__all__ = [
    "RM",
    "EpisodeTexts",
    "Episodes",
    "Normalise",
    "Rewards",
    "component_stats",
    "critic_scale",
    "describe",
    "load_rewards",
    "reward_normaliser",
    "with_rows",
]
