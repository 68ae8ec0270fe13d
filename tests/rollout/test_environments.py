"""Multi-turn episodes, token for token: a scripted engine (fixed turns) and scripted environments (fixed
answers and rewards, tests/envs.py) fix every token, so the context each turn is sampled from, the masks and
the rewards can be written out by hand."""

import pytest
import torch

import envs
from helpers import chatml
from rlhfkit.data.encode import prompt_ids, render_conversation
from rlhfkit.errors import StepFailed, UsageError
from rlhfkit.rollout import Rollout, SamplingSettings
from rlhfkit.rollout.environments import (
    ENDINGS,
    EpisodeRunner,
    check_environment,
    episode_turns,
    load_environment,
)


class ScriptedEngine:
    """Returns `turns[n]` (token ids) for every row at its n-th call, cut after the first stop token as the
    sampler cuts, and records the prompts (contexts) it was given."""

    def __init__(self, turns: list[list[int]], stop_ids: list[int], pad_id: int) -> None:
        self.turns, self.stop_ids, self.pad_id, self.calls = turns, stop_ids, pad_id, []

    def generate(self, prompts, settings, generator=None, noise=None, width=None) -> Rollout:
        self.calls.append([list(p) for p in prompts])
        tokens = self.turns[len(self.calls) - 1][: settings.max_new_tokens]
        stop = next((i for i, t in enumerate(tokens) if t in self.stop_ids), None)
        kept = tokens if stop is None else tokens[: stop + 1]
        b, n = len(prompts), len(tokens)
        ids = torch.full((b, n), self.pad_id)
        ids[:, : len(kept)] = torch.tensor(kept)
        mask = torch.zeros(b, n, dtype=torch.bool)
        mask[:, : len(kept)] = True
        width = width or max(map(len, prompts))
        opening = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])
        return Rollout(
            opening,
            (opening != self.pad_id).long(),
            ids,
            mask,
            -0.5 * mask,
            torch.full((b,), stop is not None),
        )

    def sync_weights(self) -> None: ...


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def runner(tokenizer, turns, env="envs:Scripted", stops=None, max_turns=4, max_length=256) -> EpisodeRunner:
    stops = stops or [tokenizer.eos_token_id]
    engine = ScriptedEngine(turns, stops, tokenizer.pad_token_id)
    return EpisodeRunner(
        engine,
        tokenizer,
        load_environment(env),
        torch.tensor(stops),
        max_turns,
        max_length,
        max_prompt_length=64,
    )


def run(episodes: EpisodeRunner, prompts, rows, records, response_length=16) -> Rollout:
    return episodes.run(prompts, rows, records, SamplingSettings(response_length), None, everywhere=False)


def region(rollout: Rollout, row: int = 0) -> tuple[list[int], list[bool], list[float]]:
    """Row `row`'s tokens after the opening, which of them are the policy's, and the rewards on them."""
    keep = rollout.response_mask[row]
    return (
        rollout.response_ids[row][keep].tolist(),
        rollout.policy_mask[row][keep].tolist(),
        rollout.turn_rewards[row][keep].tolist(),
    )


def test_text_mode_context_is_the_prompt_then_each_turn_as_sampled_then_each_answer(tiny_tokenizer):
    tok = tiny_tokenizer
    eos = tok.eos_token_id
    turns = [ids(tok, " great and fine") + [eos], ids(tok, " bad") + [eos], ids(tok, " wonderful") + [eos]]
    answers = [ids(tok, a) for a in envs.Scripted.ANSWERS[:2]]  # several tokens each
    assert all(len(a) > 1 for a in answers)
    episodes = runner(tok, turns)
    prompt = prompt_ids(tok, "the film was")
    envs.LOG.clear()
    rollout = run(episodes, [prompt], [{"prompt": "the film was"}], [{"prompt": "the film was"}])
    # the sampler saw: the prompt; then the prompt, turn 1 (its EOS kept) and the answer; and so on
    calls = episodes.engine.calls
    assert calls[0] == [prompt]
    assert calls[1] == [prompt + turns[0] + answers[0]]
    assert calls[2] == [prompt + turns[0] + answers[0] + turns[1] + answers[1]]
    tokens, policy, rewards = region(rollout)
    assert tokens == turns[0] + answers[0] + turns[1] + answers[1] + turns[2]
    mine, theirs = ([True] * len(t) for t in turns), ([False] * len(a) for a in answers)
    assert policy == next(mine) + next(theirs) + next(mine) + next(theirs) + next(mine)
    # turn t's reward is t, on the turn's last token (its EOS); nothing anywhere else
    ends = [len(turns[0]) - 1, len(turns[0] + answers[0] + turns[1]) - 1, len(tokens) - 1]
    assert [i for i, r in enumerate(rewards) if r] == ends and [rewards[i] for i in ends] == [1.0, 2.0, 3.0]
    # the environment read each turn as text without its stop token
    assert [r for _, r in envs.LOG] == [" great and fine", " bad", " wonderful"]
    assert rollout.prompt_ids[0].tolist() == prompt
    assert ENDINGS[int(rollout.ended[0])] == "environment" and int(rollout.turns[0]) == 3
    assert bool(rollout.stopped[0])
    turns_shown = episode_turns(tok, rollout, 0, {eos})
    assert [t["role"] for t in turns_shown] == ["policy", "environment"] * 2 + ["policy"]
    assert turns_shown[1]["text"] == tok.decode(answers[0])


def test_a_stop_string_stays_in_the_context_and_leaves_the_text(tiny_tokenizer):
    tok = tiny_tokenizer
    period = ids(tok, ".")
    assert len(period) == 1
    turns = [ids(tok, " great") + period + ids(tok, " fine"), ids(tok, " bad") + period]
    episodes = runner(tok, turns, stops=[tok.eos_token_id, period[0]])
    envs.LOG.clear()
    rollout = run(episodes, [prompt_ids(tok, "the")], [{"turns": 2}], [{"prompt": "the"}])
    tokens, _, _ = region(rollout)
    # the sampler's cut after the first stop: " fine" was never part of the turn
    assert (
        tokens == ids(tok, " great") + period + ids(tok, envs.Scripted.ANSWERS[0]) + ids(tok, " bad") + period
    )
    assert [r for _, r in envs.LOG] == [" great", " bad"]


def test_max_turns_ends_the_episode_without_the_last_answer(tiny_tokenizer):
    tok = tiny_tokenizer
    turns = [ids(tok, " good") + [tok.eos_token_id]] * 2
    rollout = run(runner(tok, turns, max_turns=2), [prompt_ids(tok, "a")], [{"turns": 9}], [{"prompt": "a"}])
    tokens, _, rewards = region(rollout)
    assert tokens == turns[0] + ids(tok, envs.Scripted.ANSWERS[0]) + turns[1]
    assert ENDINGS[int(rollout.ended[0])] == "max_turns" and sum(rewards) == 3.0  # both turns rewarded


def test_a_turn_cut_by_max_episode_length_is_rewarded_and_ends_the_episode(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = prompt_ids(tok, "the film was")
    first = ids(tok, " good") + [tok.eos_token_id]
    answer = ids(tok, envs.Scripted.ANSWERS[0])
    long_turn = ids(tok, " great great great great great great") + [tok.eos_token_id]
    room = 3  # the second turn may only have 3 tokens
    limit = len(prompt) + len(first) + len(answer) + room
    envs.LOG.clear()
    rollout = run(runner(tok, [first, long_turn], max_length=limit), [prompt], [{}], [{"prompt": "x"}])
    tokens, policy, rewards = region(rollout)
    assert tokens == first + answer + long_turn[:room]
    assert len(prompt) + len(tokens) == limit
    assert ENDINGS[int(rollout.ended[0])] == "length" and not bool(rollout.stopped[0])
    # step read the cut turn; its reward (2) sits on the cut turn's last kept token
    assert envs.LOG[-1][1] == tok.decode(long_turn[:room])
    assert rewards[-1] == 2.0 and policy[-room:] == [True] * room


def test_an_answer_that_leaves_no_room_ends_the_episode_before_it(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt, first = prompt_ids(tok, "the"), ids(tok, " good") + [tok.eos_token_id]
    limit = len(prompt) + len(first) + len(ids(tok, envs.Scripted.ANSWERS[0]))  # no room after the answer
    rollout = run(runner(tok, [first], max_length=limit), [prompt], [{}], [{"prompt": "the"}])
    assert region(rollout)[0] == first
    assert ENDINGS[int(rollout.ended[0])] == "length" and bool(rollout.stopped[0])


def test_a_turn_without_a_stop_token_ends_the_episode(tiny_tokenizer):
    tok = tiny_tokenizer
    rollout = run(runner(tok, [ids(tok, " good good good")]), [prompt_ids(tok, "a")], [{}], [{"prompt": "a"}])
    assert ENDINGS[int(rollout.ended[0])] == "length" and int(rollout.turns[0]) == 1
    assert region(rollout)[2][-1] == 1.0


def test_reset_gives_the_opening(tiny_tokenizer):
    tok = tiny_tokenizer
    episodes = runner(tok, [ids(tok, " good") + [tok.eos_token_id]], env="envs:Opening", max_turns=1)
    rollout = run(episodes, [prompt_ids(tok, "ignored")], [{}], [{"prompt": "ignored"}])
    expected = prompt_ids(tok, "the story was")
    assert episodes.engine.calls[0] == [expected]
    assert rollout.prompt_ids[0][rollout.prompt_mask[0].bool()].tolist() == expected


def test_episodes_of_different_lengths_pad_apart(tiny_tokenizer):
    tok = tiny_tokenizer
    turns = [ids(tok, " good") + [tok.eos_token_id]] * 3
    rows = [{"turns": 1}, {"turns": 3}]
    prompts = [prompt_ids(tok, "a"), prompt_ids(tok, "the film was")]
    episodes = runner(tok, turns)
    rollout = run(episodes, prompts, rows, [{"prompt": "a"}, {"prompt": "the film was"}])
    assert rollout.turns.tolist() == [1, 3]
    assert region(rollout, 0)[0] == turns[0]
    assert len(region(rollout, 1)[0]) == 3 * len(turns[0]) + sum(
        len(ids(tok, a)) for a in envs.Scripted.ANSWERS[:2]
    )
    # turns 2 and 3 were sampled for the live episode alone
    assert [len(call) for call in episodes.engine.calls] == [2, 1, 1]


def test_an_empty_answer_keeps_the_turns_apart(tiny_tokenizer):
    tok = tiny_tokenizer
    eos = tok.eos_token_id
    turns = [ids(tok, " great") + [eos], ids(tok, " bad") + [eos]]
    envs.LOG.clear()
    rollout = run(
        runner(tok, turns, env="envs:Quiet"), [prompt_ids(tok, "a")], [{"turns": 2}], [{"prompt": "a"}]
    )
    assert region(rollout)[0] == turns[0] + turns[1]
    assert [r for _, r in envs.LOG] == [" great", " bad"]  # the second turn alone, not both
    assert [t["text"] for t in episode_turns(tok, rollout, 0, {eos})] == [tok.decode(t) for t in turns]


class CompiledEngine(ScriptedEngine):
    decoder = object()  # not the eager decoder: a static cache or a compiled graph keeps one batch size


def test_a_compiled_decoder_samples_every_turn_at_the_batchs_size(tiny_tokenizer):
    tok = tiny_tokenizer
    turns = [ids(tok, " good") + [tok.eos_token_id]] * 3
    episodes = runner(tok, turns)
    episodes.engine = CompiledEngine(turns, [tok.eos_token_id], tok.pad_token_id)
    rows = [{"turns": 1}, {"turns": 3}, {"turns": 1}]
    prompts = [prompt_ids(tok, "a")] * 3
    rollout = run(episodes, prompts, rows, [{"prompt": "a"}] * 3)
    assert [len(call) for call in episodes.engine.calls] == [3, 3, 3]  # the live episode, filled to 3
    assert rollout.turns.tolist() == [1, 3, 1]


def test_an_async_environment_is_awaited(tiny_tokenizer):
    tok = tiny_tokenizer
    turns = [ids(tok, " good") + [tok.eos_token_id]] * 2
    rollout = run(
        runner(tok, turns, env="envs:Async"), [prompt_ids(tok, "a")], [{"turns": 2}], [{"prompt": "a"}]
    )
    assert region(rollout)[2][-1] == 2.0 and int(rollout.turns[0]) == 2


# --- messages mode ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_tokenizer):
    return chatml(tiny_tokenizer)


def test_messages_mode_appends_only_the_new_messages_as_the_template_renders_them(chat_tokenizer):
    tok = chat_tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    turns = [ids(tok, "great") + [end], ids(tok, "fine") + [end], ids(tok, "bad") + [end]]
    opening = [{"role": "user", "content": "the film was"}]
    episodes = runner(tok, turns, env="envs:Chat", stops=[tok.eos_token_id, end])
    prompt = prompt_ids(tok, opening)
    rollout = run(episodes, [prompt], [{}], [{"messages": opening}])
    # after the policy's <|im_end|>: the template's newline, the user's turn, the next generation prompt
    answer = [
        ids(tok, f"\n<|im_start|>user\n{a.strip()}<|im_end|>\n<|im_start|>assistant\n")
        for a in ("the film was", "it was great")
    ]
    tokens, policy, _ = region(rollout)
    assert tokens == turns[0] + answer[0] + turns[1] + answer[1] + turns[2]
    assert episodes.engine.calls[1] == [prompt + turns[0] + answer[0]]
    assert policy.count(False) == len(answer[0]) + len(answer[1])
    # the kept tokens are what the template makes of the whole conversation
    conversation = [
        *opening,
        {"role": "assistant", "content": "great"},
        {"role": "user", "content": "the film was"},
        {"role": "assistant", "content": "fine"},
        {"role": "user", "content": "it was great"},
        {"role": "assistant", "content": "bad"},
    ]
    whole = render_conversation(tok, conversation)
    kept = tok.decode(prompt + tokens, skip_special_tokens=False)
    assert whole.startswith(kept) and whole[len(kept) :] == "\n"  # the template's newline after the last turn


def test_a_template_that_rewrites_earlier_turns_is_refused_at_start_up(chat_tokenizer):
    import copy

    tok = copy.deepcopy(chat_tokenizer)
    # hides every assistant turn but the last, as reasoning templates drop earlier thoughts
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{ m['content'] }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    row = {"messages": [{"role": "user", "content": "the film was"}]}
    with pytest.raises(UsageError, match="rewrites earlier turns"):
        check_environment(load_environment("envs:Chat"), row, row, tok)
    check_environment(load_environment("envs:Chat"), row, row, chat_tokenizer)  # ChatML extends turn by turn


def test_a_template_that_refuses_a_role_is_one_line_at_start_up_and_a_step_failure_later(chat_tokenizer):
    import copy

    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('unknown role tool') }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    row = {"messages": [{"role": "user", "content": "the film was"}]}
    with pytest.raises(UsageError, match="cannot render the environment's messages .*unknown role tool"):
        check_environment(load_environment("envs:Tool"), row, row, tok)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    episodes = runner(tok, [ids(tok, "great") + [end]] * 2, env="envs:Tool", stops=[end])
    with pytest.raises(StepFailed, match="unknown role tool"):
        run(episodes, [prompt_ids(tok, row["messages"])], [{}], [row])


@pytest.mark.parametrize(
    ("spec", "message"), [("envs:ChatOpening", "cannot be encoded"), ("envs:EmptyOpening", "empty opening")]
)
def test_an_opening_that_cannot_start_an_episode_is_refused_at_start_up(tiny_tokenizer, spec, message):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None  # a conversation cannot be rendered
    with pytest.raises(UsageError, match=message):
        check_environment(load_environment(spec), {}, {"prompt": "a"}, tok)


def test_messages_after_a_text_opening_are_refused_at_start_up(chat_tokenizer):
    row = {"prompt": "the film was"}
    with pytest.raises(UsageError, match="opens with text"):
        check_environment(load_environment("envs:Chat"), row, row, chat_tokenizer)


# --- a bad environment ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("envs:Raises", r"step\(\) raised RuntimeError \(the game server is down\)"),
        ("envs:WrongType", r"returned 'higher'; it must return \(text, a list of messages or None, a reward"),
    ],
)
def test_a_failing_environment_is_refused_at_start_up(tiny_tokenizer, spec, message):
    with pytest.raises(UsageError, match=message):
        check_environment(load_environment(spec), {}, {"prompt": "a"}, tiny_tokenizer)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("envs_missing:Game", "cannot import envs_missing"),
        ("helpers:great_reward", "has no step"),
        ("envs", "module:"),
    ],
)
def test_an_environment_that_cannot_load_is_a_usage_error(spec, message):
    with pytest.raises(UsageError, match=message):
        load_environment(spec)


def test_an_environment_failing_mid_episode_is_a_step_failure(tiny_tokenizer, monkeypatch):
    tok = tiny_tokenizer
    monkeypatch.setattr(envs.FailsLater, "FAIL_AFTER", 1)
    monkeypatch.setitem(envs.FailsLater.MADE, "n", 0)
    turns = [ids(tok, " good") + [tok.eos_token_id]] * 2
    prompts, rows, records = [prompt_ids(tok, "a")] * 2, [{}] * 2, [{"prompt": "a"}] * 2
    with pytest.raises(StepFailed, match="raised ConnectionError"):  # the second episode's environment
        run(runner(tok, turns, env="envs:FailsLater"), prompts, rows, records)


def test_filling_the_batch_leaves_every_episodes_draws_as_they_were(tiny_dir):
    """A static or compiled decoder samples turns at the batch's size (filler rows); with the draws from a
    generator (PPO's evaluation), each live episode must still read the uniforms it reads without them."""
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.rollout import LocalSampler, stop_token_ids

    class NotEager:  # decodes eagerly, but is not the eager decoder: the runner fills the batch for it
        def __init__(self, inner):
            self.inner = inner

        def start(self, *args):
            return self.inner.start(*args)

        def step(self, *args):
            return self.inner.step(*args)

    tok = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, tok).eval()
    rows = [{"turns": 1}, {"turns": 3}, {"turns": 2}, {"turns": 3}]
    prompts = [prompt_ids(tok, p) for p in ("the film was", "a", "the hotel was", "it")]
    records = [{"prompt": "x"}] * 4
    played = []
    for fill in (False, True):
        sampler = LocalSampler(model, tok, stop_token_ids(tok))
        if fill:
            sampler.decoder = NotEager(sampler.decoder)
        episodes = EpisodeRunner(
            sampler, tok, load_environment("envs:Scripted"), sampler.stop_ids, 3, 256, 64
        )
        assert episodes.fixed_rows == fill
        generator = torch.Generator().manual_seed(0)
        rollout = episodes.run(prompts, rows, records, SamplingSettings(8, 1.0), None, False, generator)
        played.append([region(rollout, row)[0] for row in range(4)])
    assert played[0] == played[1]
