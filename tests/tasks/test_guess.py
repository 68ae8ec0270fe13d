"""The bundled multi-turn task, guess my number: the environment's answers and rewards, its rows and
demonstrations, the gold, and that a demonstration's prompt is token for token the rollout's context."""

import re

import pytest

from rlhfkit.tasks import guess
from rlhfkit.tasks.guess import GuessingGame

ROW = {"prompt": guess.prompt_text(8), "secret": 5, "high": 8}


def test_wrong_guesses_get_the_direction_and_the_turn_cost_until_the_right_one_ends_it():
    game = GuessingGame(ROW)
    assert game.step(" 3") == (" higher\nGuess:", -0.1)  # 5 > 3: 4..8 still allowed
    assert (game.low, game.high) == (4, 8)
    assert game.step(" 7") == (" lower\nGuess:", -0.1)  # 5 < 7: 4..6 allowed
    assert (game.low, game.high) == (4, 6)
    assert game.step("5") == (None, 1.0)  # found: the episode ends
    assert game.found and game.turns == 3 and game.ruled_out == 0 and game.rewards == [-0.1, -0.1, 1.0]


def test_a_guess_the_answers_had_ruled_out_costs_more_and_still_gets_its_answer():
    game = GuessingGame(ROW)
    game.step(" 6")  # lower: 1..5 allowed
    assert game.step(" 7") == (" lower\nGuess:", -0.5)  # above 5: ruled out by "lower" to 6
    assert game.step(" 6") == (" lower\nGuess:", -0.5)  # a repeat is ruled out too
    assert game.step(" 2") == (" higher\nGuess:", -0.1)  # allowed (1..5), wrong: 3..5 now
    assert game.step(" 1") == (" higher\nGuess:", -0.5)  # below 3
    assert (game.low, game.high) == (3, 5) and game.ruled_out == 3 and not game.found


@pytest.mark.parametrize("response", ["", " five", " 0", " 9", " 5 6", " 5.", " -5", " \uff15"])
def test_a_turn_that_names_no_number_of_the_range_ends_the_episode_with_the_invalid_reward(response):
    game = GuessingGame(ROW)
    assert game.step(response) == (None, -1.0)
    assert not game.found and game.turns == 1


def test_parse_guess_reads_digits_with_surrounding_whitespace_within_the_range():
    assert [guess.parse_guess(t) for t in (" 1", "8\n", " 4 ")] == [1, 8, 4]
    assert guess.parse_guess(" 3", high=2) is None  # out of 1..2


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p"}, "'secret' must be an integer, got None"),
        ({"prompt": "p", "secret": "5"}, "'secret' must be an integer, got '5'"),
        ({"prompt": "p", "secret": True}, "'secret' must be an integer, got True"),
        ({"prompt": "p", "secret": 9}, r"'secret' must be in 1\.\.8, got 9"),
        ({"prompt": "p", "secret": 0, "high": 4}, r"'secret' must be in 1\.\.4, got 0"),
        ({"prompt": "p", "secret": 1, "high": 1}, "'high' must be at least 2, got 1"),
    ],
)
def test_a_bad_row_is_a_one_line_error_naming_the_column(row, message):
    with pytest.raises(ValueError, match=message):
        GuessingGame(row)


def test_game_rows_balance_the_secrets_and_depend_on_the_seed_only():
    rows = guess.game_rows(20, seed=3)
    counts = [sum(r["secret"] == s for r in rows) for s in range(1, 9)]
    # 20 = 2 rounds of 1..8 (16 rows) + 4 distinct secrets drawn once more
    assert sorted(counts) == [2, 2, 2, 2, 3, 3, 3, 3]
    assert all(
        r["prompt"] == "I am thinking of a number from 1 to 8.\nGuess:" and r["high"] == 8 for r in rows
    )
    assert guess.game_rows(20, seed=3) == rows
    assert [r["secret"] for r in guess.game_rows(20, seed=4)] != [r["secret"] for r in rows]


def _history(prompt: str) -> list[tuple[int, str]]:
    """The (guess, answer) pairs of a demonstration's prompt."""
    return [(int(g), a) for g, a in re.findall(r" (\d+)</s> (higher|lower)\nGuess:", prompt)]


def test_demonstrations_replay_games_turn_by_turn_with_the_stop_token_in_the_context():
    rows = guess.demonstrations(50, seed=1, skill=0.5)
    assert guess.demonstrations(50, seed=1, skill=0.5) == rows
    opening = guess.prompt_text()
    for row in rows:
        assert re.fullmatch(r" [1-8]", row["completion"])
        assert row["prompt"].startswith(opening)
        turns = _history(row["prompt"])
        # the prompt is the opening and every earlier turn, nothing else
        rebuilt = opening + "".join(f" {g}</s> {a}{guess.ASK}" for g, a in turns)
        assert row["prompt"] == rebuilt and len(turns) < guess.MAX_TURNS
    first_turns = sum(row["prompt"] == opening for row in rows)
    assert first_turns == 50  # one game each


def _allowed(turns: list[tuple[int, str]], top: int = 8) -> range:
    low, high = 1, top
    for g, answer in turns:
        low, high = (max(low, g + 1), high) if answer == "higher" else (low, min(high, g - 1))
    return range(low, high + 1)


def test_the_weak_players_skill_is_how_often_it_uses_the_feedback():
    # skill 1: every guess is one the feedback still allows; skill 0: some guesses ignore it
    for row in guess.demonstrations(200, seed=0, skill=1.0):
        assert int(row["completion"]) in _allowed(_history(row["prompt"]))
    rows = guess.demonstrations(200, seed=0, skill=0.0)
    assert any(int(r["completion"]) not in _allowed(_history(r["prompt"])) for r in rows)
    # skill 0 plays as if there were no feedback: a guess is uniform over 1..8 whatever the history
    later = [int(r["completion"]) for r in rows if _history(r["prompt"])]
    assert set(later) == set(range(1, 9))
    with pytest.raises(ValueError, match="skill must be in"):
        guess.demonstrations(10, seed=0, skill=1.5)


def test_gold_is_success_rate_mean_episode_reward_turns_and_invalid_share():
    found, invalid, lost = GuessingGame(ROW), GuessingGame(ROW), GuessingGame(ROW)
    found.step(" 3"), found.step(" 5")  # rewards -0.1, 1.0
    invalid.step(" x")  # -1.0
    for g in (" 1", " 2", " 2", " 4"):  # -0.1, -0.1, -0.5 (a repeat), -0.1; never found
        lost.step(g)
    gold = guess.gold([found, invalid, lost])
    assert gold.success == pytest.approx(1 / 3)
    assert gold.env_reward == pytest.approx((0.9 - 1.0 - 0.8) / 3)  # -0.9 / 3
    assert gold.turns == pytest.approx((2 + 1 + 4) / 3)
    assert gold.ruled_out == pytest.approx(1 / 3)  # one ruled-out guess in three episodes
    assert gold.invalid == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no episodes"):
        guess.gold([])


def test_a_demonstration_prompt_is_token_for_token_the_text_mode_context():
    """SFT encodes a demonstration's prompt in one go (the stop token written as text); the rollout builds
    the same context piece by piece: the opening's ids, each turn's ids with the EOS id, each answer's ids
    without special tokens. Any difference would train SFT on contexts PPO never shows."""
    from rlhfkit.models import train_tokenizer

    rows = guess.demonstrations(300, seed=2, skill=0.5)
    tokenizer = train_tokenizer([r["prompt"] + r["completion"] for r in rows], vocab_size=300)

    def ids(text: str, special: bool = False) -> list[int]:
        return tokenizer(text, add_special_tokens=special)["input_ids"]

    secret = 6
    game, context = GuessingGame({**ROW, "secret": secret}), ids(ROW["prompt"], special=True)
    text = ROW["prompt"]
    for g in (" 3", " 8", " 7"):
        answer, _ = game.step(g)
        context += ids(g) + [tokenizer.eos_token_id] + ids(answer)
        text += f"{g}</s>{answer}"
        assert ids(text, special=True) == context


def test_ppo_on_a_bad_game_row_stops_at_start_up_with_one_line_and_writes_nothing(tiny_dir, tmp_path, capsys):
    from helpers import write_jsonl
    from rlhfkit.cli import main

    prompts = write_jsonl(tmp_path / "games.jsonl", [{**ROW, "secret": 12}] * 16)
    out = tmp_path / "ppo"
    environment = "environment=rlhfkit.tasks.guess:GuessingGame"
    argv = ["ppo", "--policy", tiny_dir, "--prompts", str(prompts), "--out", str(out), environment]
    assert main([*argv, "batch_size=4", "mini_batch_size=4", "max_episode_length=512"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "'secret' must be in 1..8, got 12" in errors[0]
    assert not out.exists()
