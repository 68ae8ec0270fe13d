"""A bundled multi-turn task: guess my number. The environment holds a secret number from 1 to `high`; the
policy answers a number, the environment says whether the secret is higher or lower, until the guess is
right or the turns run out.

One episode in text mode (the environment's text after each of the policy's turns, whose stop token the
context keeps; `</s>` stands for it):

    I am thinking of a number from 1 to 8.\\nGuess: 4</s> higher\\nGuess: 6</s> lower\\nGuess: 5</s>

Every observation ends with `\\nGuess:`, as the prompt does, so each of the policy's turns starts the same way
(a space and a number) whatever came before. Rewards, one per turn: `FOUND_REWARD` for the right number (the
episode ends); `-TURN_COST` for a wrong number the answers so far still allowed (fewer turns are better:
halving the interval finds any of 8 numbers in 4 turns); `-RULED_OUT_COST` for a number the answers had
already ruled out (a repeat, or 7 after "lower" to 6): a turn's own reward says whether it used the feedback,
which is what lets a tiny model learn that in minutes; `INVALID_REWARD` for text that is not a number from 1
to `high` (the episode ends; worse than any wrong guess, so stopping early never pays). The gold is the
success rate.

Play without the feedback (a uniform guess every turn) finds the number within 4 turns 41 % of the time
(1 - (7/8)^4); uniform among the numbers the feedback still allows, 84 %; halving the interval, always. The
demonstrations (`demonstrations`) are games of a weak player that names a number the answers still allow on
a fraction `skill` of its turns (any number on the others) and picks among them uniformly, never halving.
A tiny model imitates it imperfectly (~60 % success at skill 1); PPO has to learn to use the feedback on
every turn.

Nothing here imports torch: the environment and the data generation are plain Python.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

HIGH = 8  # the numbers are 1..HIGH unless a row says otherwise
MAX_TURNS = 4  # enough to halve 1..8 down to one number: ceil(log2(8 + 1))
FOUND_REWARD = 1.0
TURN_COST = 0.1
RULED_OUT_COST = 0.5
INVALID_REWARD = -1.0
ASK = "\nGuess:"  # ends the prompt and every observation: the policy's turn follows it


def prompt_text(high: int = HIGH) -> str:
    """The game's opening: the policy's first turn follows it."""
    return f"I am thinking of a number from 1 to {high}.{ASK}"


def feedback(guess: int, secret: int) -> str:
    """The environment's answer to a wrong guess (`guess != secret`), ending with the next question."""
    return (" higher" if secret > guess else " lower") + ASK


def parse_guess(response: str, high: int = HIGH) -> int | None:
    """The number the policy's turn names (`" 5"` -> 5), or None for anything but digits of a number in
    1..high (surrounding whitespace allowed)."""
    text = response.strip()
    if not text.isdigit() or not text.isascii():
        return None
    number = int(text)
    return number if 1 <= number <= high else None


def _integer(row: dict, column: str, default: int | None = None) -> int:
    value = row.get(column, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"guessing game: the row's {column!r} must be an integer, got {value!r}")
    return value


class GuessingGame:
    """The environment of one episode (`environment=rlhfkit.tasks.guess:GuessingGame`). `row` needs the
    integer column `secret` in 1..top, where `top` is the row's optional `high` (default 8, at least 2); the
    opening is the row's `prompt` (no `reset`). `low..high` are the numbers the answers so far allow. After
    the episode, `found`, `turns`, `ruled_out` (guesses the answers had excluded) and `rewards` describe it
    (the gold)."""

    def __init__(self, row: dict) -> None:
        self.top = _integer(row, "high", HIGH)
        self.secret = _integer(row, "secret")
        if self.top < 2:
            raise ValueError(f"guessing game: the row's 'high' must be at least 2, got {self.top}")
        if not 1 <= self.secret <= self.top:
            raise ValueError(f"guessing game: the row's 'secret' must be in 1..{self.top}, got {self.secret}")
        self.low, self.high = 1, self.top
        self.found, self.turns, self.ruled_out, self.rewards = False, 0, 0, []

    def step(self, response: str) -> tuple[str | None, float]:
        """The policy's turn (its stop token stripped) -> (the next observation, or None when the episode
        ends; this turn's reward)."""
        self.turns += 1
        guess = parse_guess(response, self.top)
        if guess is None:
            observation, reward = None, INVALID_REWARD
        elif guess == self.secret:
            self.found = True
            observation, reward = None, FOUND_REWARD
        else:
            allowed = self.low <= guess <= self.high
            self.ruled_out += not allowed
            observation, reward = feedback(guess, self.secret), -TURN_COST if allowed else -RULED_OUT_COST
            if self.secret > guess:
                self.low = max(self.low, guess + 1)
            else:
                self.high = min(self.high, guess - 1)
        self.rewards.append(reward)
        return observation, reward


def game_rows(n: int, seed: int, high: int = HIGH) -> list[dict]:
    """`n` prompt rows `{"prompt", "secret", "high"}`, each secret as often as the others (n // high times,
    the remainder drawn without repeats), in a seeded random order."""
    rng = random.Random(seed)
    secrets = [1 + i % high for i in range(n - n % high)] + rng.sample(range(1, high + 1), n % high)
    rng.shuffle(secrets)
    return [{"prompt": prompt_text(high), "secret": s, "high": high} for s in secrets]


def weak_guess(low: int, high: int, top: int, skill: float, rng: random.Random) -> int:
    """The demonstrations' player: with probability `skill` a number the feedback still allows (uniform in
    low..high), else any number of 1..top (uniform), as if there were no feedback."""
    if rng.random() < skill:
        return rng.randint(low, high)
    return rng.randint(1, top)


def play_weakly(
    row: dict, skill: float, rng: random.Random, eos: str, max_turns: int = MAX_TURNS
) -> list[dict]:
    """One game of the weak player as SFT rows, one per turn: `{"prompt": the text before the turn,
    "completion": " N"}`. Earlier turns appear in the prompt as the rollout's context holds them: the guess,
    the stop token `eos` as text (the tokenizer maps it to the token), the environment's observation."""
    game = GuessingGame(row)
    context, rows = row["prompt"], []
    for _ in range(max_turns):
        guess = weak_guess(game.low, game.high, game.top, skill, rng)
        rows.append({"prompt": context, "completion": f" {guess}"})
        observation, _ = game.step(f" {guess}")
        if observation is None:
            break
        context += f" {guess}{eos}{observation}"
    return rows


def demonstrations(
    episodes: int, seed: int, skill: float = 1.0, eos: str = "</s>", high: int = HIGH
) -> list[dict]:
    """SFT rows from `episodes` games of the weak player (`play_weakly`), secrets balanced (`game_rows`)."""
    if not 0.0 <= skill <= 1.0:
        raise ValueError(f"skill must be in [0, 1], got {skill}")
    rng = random.Random(seed)
    return [turn for row in game_rows(episodes, seed, high) for turn in play_weakly(row, skill, rng, eos)]


@dataclass(frozen=True)
class Gold:
    """The gold of a set of finished episodes."""

    success: float  # fraction of episodes whose number was found
    env_reward: float  # mean of an episode's summed rewards
    turns: float  # mean policy turns per episode
    ruled_out: float  # mean guesses per episode that the answers before them had ruled out
    invalid: float  # fraction of episodes ended by a turn that named no number of the range


def gold(games: Iterable[GuessingGame]) -> Gold:
    """The gold of finished games (each played through `step`); a ValueError when there are none."""
    games = list(games)
    if not games:
        raise ValueError("gold of no episodes")
    n = len(games)
    return Gold(
        success=sum(g.found for g in games) / n,
        env_reward=sum(sum(g.rewards) for g in games) / n,
        turns=sum(g.turns for g in games) / n,
        ruled_out=sum(g.ruled_out for g in games) / n,
        invalid=sum(bool(g.rewards) and g.rewards[-1] == INVALID_REWARD for g in games) / n,
    )
