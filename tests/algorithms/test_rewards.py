"""Rewards users bring (reward functions: plain, batched, async; a reward model with its own tokenizer) and
the critic-free estimators (GRPO, RLOO, REINFORCE++) on the PPO loop."""

import asyncio
import math

import pytest
import torch

from cards import check_card, read_card
from helpers import chatml, great_rows, ppo_config, sentiment_rows, write_jsonl
from rlhfkit.algorithms.ppo import PPOTrainer, ppo
from rlhfkit.config import LoraConfig
from rlhfkit.errors import ConfigError, UsageError
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.outputs import read_run_file
from rlhfkit.tasks.rewards import (
    RewardFunctionError,
    batched,
    call_reward_function,
    load_reward_function,
)


def config(stack, out, **overrides):
    return ppo_config(stack, out, **{"max_steps": 2, "response_length": 8, "eval_holdout": 8, **overrides})


# --- calling reward functions ---------------------------------------------------------------------------


def test_a_plain_function_is_called_per_example():
    f = load_reward_function("helpers:great_reward")
    assert call_reward_function(f, ["a", "b"], ["great great", "fine"]) == [2.0, 0.0]
    assert f.name == "great_reward" and not f.is_batched and not f.is_async


def test_a_batched_function_gets_the_lists_once():
    seen = []

    @batched
    def score(prompts, responses):
        seen.append(len(prompts))
        return [float(len(r)) for r in responses]

    from rlhfkit.tasks.rewards import RewardFunction

    assert call_reward_function(RewardFunction("m:score", score), ["p"] * 3, ["a", "bb", ""]) == [
        1.0,
        2.0,
        0.0,
    ]
    assert seen == [3]


def test_async_functions_run_concurrently_up_to_the_limit():
    from rlhfkit.tasks.rewards import RewardFunction

    flight = {"now": 0, "most": 0}

    async def judge(prompt, response):
        flight["now"] += 1
        flight["most"] = max(flight["most"], flight["now"])
        await asyncio.sleep(0.01)
        flight["now"] -= 1
        return float(len(response))

    values = call_reward_function(
        RewardFunction("m:judge", judge), ["p"] * 10, ["x" * i for i in range(10)], 4
    )
    assert values == [float(i) for i in range(10)]
    assert flight["most"] == 4  # several in flight, never more than the limit


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda p, r: 1 / 0, "raised ZeroDivisionError (division by zero) on prompt"),
        (lambda p, r: "high", "returned 'high' for prompt"),
        (lambda p, r: "1.5", "returned '1.5' for prompt"),  # text even where float() would read it
        (lambda p, r: None, "returned None for prompt"),
        (lambda p, r: math.nan, "returned nan for prompt"),
        (lambda p, r: math.inf, "returned inf for prompt"),
    ],
    ids=["raises", "string", "numeric-string", "none", "nan", "inf"],
)
def test_a_bad_value_names_the_function_and_the_example(fn, message):
    from rlhfkit.tasks.rewards import RewardFunction

    long_prompt = "the movie was " * 20
    with pytest.raises(RewardFunctionError) as error:
        call_reward_function(RewardFunction("mod:bad", fn), [long_prompt], ["x"])
    text = str(error.value)
    assert "reward function mod:bad" in text and message in text and "\n" not in text
    assert repr(long_prompt[:80] + "…") in text  # the prompt, cut to 80 characters


def test_a_batched_function_must_return_one_value_per_example():
    from rlhfkit.tasks.rewards import RewardFunction

    wrong = batched(lambda prompts, responses: [1.0])
    with pytest.raises(RewardFunctionError, match="returned 1 values for 2 examples"):
        call_reward_function(RewardFunction("mod:wrong", wrong), ["a", "b"], ["x", "y"])


def test_a_function_that_cannot_be_imported_is_a_usage_error():
    with pytest.raises(UsageError, match="reward function 'no_such_module:f': cannot import"):
        load_reward_function("no_such_module:f")
    with pytest.raises(UsageError, match="has no callable 'nothing'"):
        load_reward_function("helpers:nothing")


# --- configuration ---------------------------------------------------------------------------------------


def test_the_config_checks_rewards_and_estimators(rlhf_stack, tmp_path):
    with pytest.raises(ConfigError, match="give a reward_model, reward_functions, or both"):
        config(rlhf_stack, tmp_path, reward_model=None)
    with pytest.raises(ConfigError, match="reward_weights has 1 values for 2 reward components"):
        config(rlhf_stack, tmp_path, reward_functions=("helpers:great_reward",), reward_weights=(1.0,))
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        config(rlhf_stack, tmp_path, advantage_estimator="grpo")
    with pytest.raises(ConfigError, match="multiple of samples_per_prompt"):
        config(rlhf_stack, tmp_path, advantage_estimator="rloo", samples_per_prompt=3)
    with pytest.raises(ConfigError, match="critic_model is used with advantage_estimator=gae only"):
        config(rlhf_stack, tmp_path, advantage_estimator="reinforce_pp", critic_model=rlhf_stack[0])


def test_a_function_that_fails_on_its_first_example_stops_the_run_before_anything_is_written(
    rlhf_stack, tmp_path
):
    out = tmp_path / "never"
    with pytest.raises(UsageError, match="checked at start-up"):
        PPOTrainer.create(config(rlhf_stack, out, reward_functions=("helpers:prompt_rows",)))
    assert not out.exists()


# --- the mixture, on the PPO loop ------------------------------------------------------------------------


def test_the_score_is_the_weighted_sum_of_the_components(rlhf_stack, tmp_path):
    trainer = PPOTrainer.create(
        config(
            rlhf_stack,
            tmp_path / "mix",
            reward_functions=("helpers:great_reward", "helpers:length_reward"),
            reward_weights=(0.5, 2.0, -1.0),
        )
    )
    rollout = trainer.rollout(trainer.prompt_batch(1))
    _, stats = trainer.experience(rollout)
    components = trainer.rewards.components(rollout, [slice(0, 8)])
    assert list(components) == ["model", "great_reward", "length_reward"]
    expected = 0.5 * components["model"] + 2.0 * components["great_reward"] - components["length_reward"]
    assert stats["objective/scores_raw"].item() == pytest.approx(expected.mean().item(), rel=1e-5)
    rm = trainer.roles.scores(rollout.input_ids, rollout.attention_mask)
    assert torch.allclose(components["model"], rm)  # the RM reads the policy's tokens: no re-encoding
    words = trainer.rewards.texts(rollout, range(8)).responses
    assert components["length_reward"].tolist() == pytest.approx([len(w.split()) / 10 for w in words])
    for name in ("model", "great_reward", "length_reward"):
        assert f"reward/{name}" in stats and f"reward/{name}_std" in stats


@pytest.mark.parametrize("function", ["great_reward", "great_reward_batched", "great_reward_async"])
def test_a_reward_function_alone_needs_no_reward_model(rlhf_stack, tmp_path, function):
    """No RM: GAE's critic starts from the policy with a new head; the three kinds of function agree."""
    out = ppo(
        config(rlhf_stack, tmp_path / function, reward_model=None, reward_functions=(f"helpers:{function}",))
    )
    records = read_metrics(out / "metrics.jsonl")
    assert all(f"reward/{function}" in r for r in records)
    assert all(r["objective/scores_raw"] == r[f"reward/{function}"] for r in records)
    assert (out / "critic").is_dir()
    assert read_run_file(out)["rewards"] == {function: 1.0}


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_critic_free_estimators_train_no_critic(rlhf_stack, tmp_path, estimator):
    trainer = PPOTrainer.create(
        config(rlhf_stack, tmp_path / estimator, advantage_estimator=estimator, samples_per_prompt=4)
    )
    assert trainer.roles.trainable.value is None
    assert len(trainer.opt.optimizer.param_groups) == 1  # the actor's
    prompts = trainer.prompt_batch(1)
    assert prompts[:4] == [prompts[0]] * 4 and prompts[4:] == [prompts[4]] * 4 and prompts[0] != prompts[4]
    rollout = trainer.rollout(prompts)
    experience, stats = trainer.experience(rollout)
    assert torch.equal(experience.old_values, torch.zeros_like(experience.old_values))
    assert "val/explained_variance" not in stats
    # before any update the KL is 0, so each sequence's advantage is its baselined score at every token
    first = experience.advantages[:, 0]
    if estimator == "rloo":
        s = experience.scores.view(2, 4)
        assert first.tolist() == pytest.approx((s - (s.sum(1, keepdim=True) - s) / 3).reshape(-1).tolist())
    if estimator == "grpo":
        assert first.view(2, 4).sum(1).abs().max() < 1e-5  # centred per group
    if estimator == "reinforce_pp":
        assert experience.advantages[experience.mask].mean().abs() < 1e-5  # whitened over the batch
    stats = trainer.update(experience, trainer_guard())
    assert "loss/value" not in stats and stats["policy/first_ratio_deviation"] < 1e-4


def trainer_guard():
    from rlhfkit.runtime.loop import UpdateGuard

    return UpdateGuard("test", 3)


def test_a_critic_free_run_saves_the_actor_only(rlhf_stack, tmp_path):
    out = ppo(config(rlhf_stack, tmp_path / "rloo", advantage_estimator="rloo", samples_per_prompt=2))
    assert (out / "actor").is_dir() and not (out / "critic").exists()
    assert all("loss/value" not in r for r in read_metrics(out / "metrics.jsonl"))


def test_kl_in_the_loss_works_with_every_estimator(rlhf_stack, tmp_path):
    for estimator in ("grpo", "reinforce_pp"):
        out = ppo(
            config(
                rlhf_stack,
                tmp_path / estimator,
                advantage_estimator=estimator,
                samples_per_prompt=2,
                kl_penalty="loss",
                kl_estimator="k3",
            )
        )
        assert all("loss/kl" in r for r in read_metrics(out / "metrics.jsonl"))


# --- a reward model with its own tokenizer ----------------------------------------------------------------


@pytest.fixture(scope="module")
def foreign_rm(tmp_path_factory):
    """An RM on a tokenizer of another vocabulary (trained on other text, other size) that likes `great`."""
    from rlhfkit.algorithms.reward import train_reward_model
    from rlhfkit.config import OptimConfig, RewardConfig
    from rlhfkit.models import tiny_llama, train_tokenizer

    folder = tmp_path_factory.mktemp("foreign")
    texts = [r["prompt"] + r["completion"] for r in sentiment_rows(300, seed=9)]
    tokenizer = train_tokenizer(texts + ["a b c d e f g"], vocab_size=300)
    base = folder / "base"
    tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(base)
    tokenizer.save_pretrained(base)
    rm = train_reward_model(
        RewardConfig(
            model=str(base),
            data=write_jsonl(folder / "pairs.jsonl", great_rows(200)),
            out=str(folder / "rm"),
            max_steps=20,
            batch_size=16,
            optim=OptimConfig(lr=1e-3),
        )
    )
    return str(rm)


def test_a_reward_model_with_another_tokenizer_scores_the_text_in_its_own_tokens(
    rlhf_stack, tmp_path, foreign_rm
):
    from rlhfkit.data import pad
    from rlhfkit.models import load_scalar_model, load_tokenizer, sequence_scores

    trainer = PPOTrainer.create(config(rlhf_stack, tmp_path / "foreign", reward_model=foreign_rm))
    rm_tokenizer = load_tokenizer(foreign_rm)
    assert trainer.roles.rm_tokenizer is not None
    assert rm_tokenizer.get_vocab() != trainer.roles.tokenizer.get_vocab()
    rollout = trainer.rollout(trainer.prompt_batch(1))
    scores = trainer.rewards.components(rollout, [slice(0, 8)])["model"]
    # by hand: decode with the policy's tokenizer, re-encode prompt + response (+ EOS when it stopped)
    policy_tokenizer = trainer.roles.tokenizer
    sequences = []
    for row in range(8):
        prompt = policy_tokenizer.decode(
            rollout.prompt_ids[row][rollout.prompt_mask[row].bool()], skip_special_tokens=True
        )
        response = rollout.response_ids[row][rollout.response_mask[row]]
        response = response[:-1] if rollout.stopped[row] else response  # without the stop token
        ids = (
            rm_tokenizer(prompt)["input_ids"]
            + rm_tokenizer(policy_tokenizer.decode(response), add_special_tokens=False)["input_ids"]
        )
        sequences.append(ids + ([rm_tokenizer.eos_token_id] if rollout.stopped[row] else []))
    ids, mask = pad(sequences, rm_tokenizer.pad_token_id, "right")
    rm = load_scalar_model(foreign_rm, rm_tokenizer).eval()
    with torch.no_grad():
        expected = sequence_scores(rm, ids, mask)
    assert torch.allclose(scores, expected, atol=1e-5)
    # the critic cannot read the policy's tokens as the RM: it starts from the policy
    assert trainer.roles.trainable.value.config.vocab_size == trainer.roles.trainable.policy.config.vocab_size
    out = ppo(config(rlhf_stack, tmp_path / "foreign-run", reward_model=foreign_rm))
    assert all(math.isfinite(r["objective/scores"]) for r in read_metrics(out / "metrics.jsonl"))


def test_a_reward_model_with_the_policys_tokenizer_is_not_re_encoded(rlhf_stack, tmp_path):
    trainer = PPOTrainer.create(config(rlhf_stack, tmp_path / "same"))
    assert trainer.roles.rm_tokenizer is None


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_a_reward_function_alone_raises_the_gold_reward(rlhf_stack, tmp_path, estimator):
    """The bundled task's gold scorer (VADER) as the only reward, no RM, no critic: the mean score of the
    training batches rises (seen: GRPO 0.40 -> 0.93, RLOO 0.41 -> 0.73 over 30 iterations)."""
    out = ppo(
        config(
            rlhf_stack,
            tmp_path / estimator,
            reward_model=None,
            reward_functions=("rlhfkit.tasks.sentiment:gold",),
            advantage_estimator=estimator,
            samples_per_prompt=4,
            max_steps=30,
            batch_size=16,
            mini_batch_size=8,
            response_length=10,
            actor_lr=3e-4,
        )
    )
    scores = [r["reward/gold"] for r in read_metrics(out / "metrics.jsonl")]
    early, late = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert late > early + 0.2, (early, late)


def test_lora_with_a_critic_free_estimator_keeps_one_base_and_a_frozen_rm(rlhf_stack, tmp_path):
    from rlhfkit.algorithms.ppo.roles import SharedBases

    trainer = PPOTrainer.create(
        config(
            rlhf_stack,
            tmp_path / "lora-grpo",
            advantage_estimator="grpo",
            samples_per_prompt=2,
            lora=LoraConfig(r=4, alpha=8.0),
        )
    )
    assert isinstance(trainer.roles, SharedBases) and trainer.roles.critic is None
    assert trainer.roles.reward_model is not None and not trainer.roles.rm_in_critic
    assert not any(p.requires_grad for p in trainer.roles.reward_model.parameters())
    out = ppo(
        config(
            rlhf_stack,
            tmp_path / "lora-grpo-run",
            advantage_estimator="grpo",
            samples_per_prompt=2,
            lora=LoraConfig(r=4, alpha=8.0),
        )
    )
    assert (out / "actor-adapter").is_dir() and not (out / "critic").exists()
    final = read_run_file(out)["final"]  # the model cards name the estimator
    check_card(out / "actor", ["rlhfkit", "grpo"], final)
    check_card(out / "actor-adapter", ["rlhfkit", "grpo", "lora"], final, library="peft")


def test_lora_with_a_reward_function_alone_adapts_a_critic_from_the_policy(rlhf_stack, tmp_path):
    out = ppo(
        config(
            rlhf_stack,
            tmp_path / "lora-fn",
            reward_model=None,
            reward_functions=("helpers:great_reward",),
            lora=LoraConfig(r=4, alpha=8.0),
        )
    )
    assert (out / "critic-adapter").is_dir() and (out / "actor-adapter").is_dir()
    _, body = read_card(out / "critic-adapter")  # the critic's card: it started from the policy
    assert f"**Started from:** `{rlhf_stack[0]}`" in body and "the critic (value model)" in body


def test_only_the_reward_model_is_normalised_before_weighting(rlhf_stack, tmp_path):
    """`normalize_reward` maps the RM's scores with its saved statistics; a function's value is taken as it
    is, and each weight multiplies what it names."""
    trainer = PPOTrainer.create(
        config(
            rlhf_stack,
            tmp_path / "norm",
            normalize_reward=True,
            reward_functions=("helpers:great_reward",),
            reward_weights=(2.0, 1.0),
        )
    )
    stats = read_run_file(rlhf_stack[1])["reward_stats"]
    rollout = trainer.rollout(trainer.prompt_batch(1))
    experience, logged = trainer.experience(rollout)
    parts = trainer.rewards.components(rollout, [slice(0, 8)])
    expected = 2.0 * (parts["model"] - stats["mean"]) / stats["std"] + parts["great_reward"]
    assert torch.allclose(experience.scores, expected, atol=1e-5)
    raw = 2.0 * parts["model"] + parts["great_reward"]
    assert logged["objective/scores_raw"].item() == pytest.approx(raw.mean().item(), rel=1e-5)


def test_the_same_function_twice_is_refused(rlhf_stack, tmp_path):
    with pytest.raises(ConfigError, match="names helpers:great_reward twice"):
        config(rlhf_stack, tmp_path, reward_functions=("helpers:great_reward", "helpers:great_reward"))


def test_an_unfinished_response_is_re_encoded_without_eos(tiny_tokenizer):
    from rlhfkit.data.encode import scored_sequence

    finished = scored_sequence("the movie was", " great", tiny_tokenizer)
    unfinished = scored_sequence("the movie was", " great", tiny_tokenizer, finished=False)
    assert finished[-1] == tiny_tokenizer.eos_token_id and finished[:-1] == unfinished


def test_a_checkpoint_with_a_critic_does_not_resume_without_one():
    from rlhfkit.config import LoraConfig as Lora
    from rlhfkit.runtime.sharding import check_layout, checkpoint_layout

    with_critic, without = checkpoint_layout(None, Lora(), True), checkpoint_layout(None, Lora(), False)
    with pytest.raises(UsageError, match="critic=True \\(now False\\)"):
        check_layout(with_critic, without)
    older = {k: v for k, v in with_critic.items() if k != "critic"}  # written before the key existed
    check_layout(older, with_critic)


# --- what a reward reads: the response without its stop, the prompt's own row ----------------------------

SEEN: list[tuple[str, str, dict]] = []  # (prompt, response, columns) of every call of `recorder`


def recorder(prompt: str, response: str, **columns) -> float:
    """A reward function that remembers what it was given (every column of the row, through **kwargs)."""
    SEEN.append((prompt, response, columns))
    return 0.0


def verifier(prompt: str, response: str, answer: str) -> float:
    """A reward function that reads the row's reference answer (as a math verifier would)."""
    SEEN.append((prompt, response, {"answer": answer}))
    return float(answer in response)


def test_response_text_drops_the_stop_token_and_padding_and_keeps_other_special_tokens(tiny_tokenizer):
    from rlhfkit.rollout.completions import response_text

    tok = tiny_tokenizer
    great, hi = (
        tok(" great", add_special_tokens=False)["input_ids"],
        tok(" hi", add_special_tokens=False)["input_ids"],
    )
    user, dot, pad = tok.convert_tokens_to_ids("<|user|>"), tok.convert_tokens_to_ids("."), tok.pad_token_id
    ids = torch.tensor(great + [user] + hi + [tok.eos_token_id, pad, pad])
    mask = torch.tensor([True] * (len(great) + len(hi) + 2) + [False, False])
    # a fake turn mid-response stays visible; the EOS that ended it and the padding go
    assert response_text(tok, ids, mask, stopped=True) == " great<|user|> hi"
    # a stop string ends the response as EOS does: it is not part of the text
    dotted = torch.tensor(great + [dot])
    assert response_text(tok, dotted, torch.ones(len(great) + 1, dtype=torch.bool), stopped=True) == " great"
    # an unfinished response keeps its last token
    assert (
        response_text(tok, dotted, torch.ones(len(great) + 1, dtype=torch.bool), stopped=False) == " great."
    )


def test_with_a_stop_string_functions_get_the_response_without_it_and_see_role_tokens(rlhf_stack, tmp_path):
    """Bug 5: with stop_tokens=. a function received ` great and lovely.`; and `skip_special_tokens`
    hid a role token the policy emitted mid-response, so a fake turn could not be penalised."""
    from rlhfkit.data import pad

    trainer = PPOTrainer.create(
        config(rlhf_stack, tmp_path / "stop", stop_tokens=(".",), reward_functions=(f"{__name__}:recorder",))
    )
    rollout = trainer.rollout(trainer.prompt_batch(1))
    assert rollout.stopped.any()  # the tiny SFT model ends its sentences with "."
    long = int(rollout.response_mask.sum(1).argmax())  # a response of 3 tokens or more
    user = trainer.roles.tokenizer.convert_tokens_to_ids("<|user|>")
    rollout.response_ids[long, 0] = user  # the policy opens a fake user turn
    SEEN.clear()
    trainer.experience(rollout)
    responses = [response for _, response, _ in SEEN]
    tokenizer = trainer.roles.tokenizer
    dot = tokenizer.convert_tokens_to_ids(".")
    for row, response in enumerate(responses):
        valid = rollout.response_ids[row][rollout.response_mask[row]]
        if rollout.stopped[row]:
            assert int(valid[-1]) in (dot, tokenizer.eos_token_id)
            assert response == tokenizer.decode(valid[:-1]) and not response.endswith(".")
        else:
            assert response == tokenizer.decode(valid)
    last = rollout.response_ids.gather(1, rollout.response_mask.sum(1, keepdim=True) - 1)  # (B, 1)
    assert (last == dot).any()  # some responses ended on the stop string
    assert responses[long].startswith("<|user|>")
    # the RM reads a response as `rm` read the pairs `label` wrote (which stop at EOS only): the "." is
    # content, kept, and EOS follows it; an EOS stop is read where it is (review finding 1)
    scores = trainer.rewards.components(rollout, [slice(0, 8)])["model"]
    for row in range(8):
        sequence = rollout.input_ids[row][rollout.attention_mask[row].bool()].tolist()
        if rollout.stopped[row] and sequence[-1] == dot:
            sequence.append(tokenizer.eos_token_id)
        with torch.no_grad():
            expected = trainer.roles.scores(*pad([sequence], tokenizer.pad_token_id, "right")).item()
        assert scores[row].item() == pytest.approx(expected, abs=1e-4)


ROWS = [{"prompt": "first: the movie was", "answer": "1"}, {"prompt": "second: the movie was", "answer": "2"}]


def two_row_trainer(stack, tmp_path, function):
    """A trainer on 20 rows of two prompts that truncate to the same 3 tokens (`the movie was`)."""
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS * 10)
    return PPOTrainer.create(
        config(
            stack,
            tmp_path / function,
            prompts=prompts,
            max_prompt_length=3,
            reward_functions=(f"{__name__}:{function}",),
        )
    )


def test_prompts_that_truncate_to_the_same_tokens_keep_their_own_rows(rlhf_stack, tmp_path):
    """Rows were found again by their prompt's ids: both rows here read the first one's text. Each episode
    carries its row's index now (and the warning about such clashes is gone with the clash)."""
    trainer = two_row_trainer(rlhf_stack, tmp_path, "recorder")
    batch = trainer.prompt_batch(1)
    rollout = trainer.rollout(batch)
    SEEN.clear()
    trainer.experience(rollout)
    seen = [prompt for prompt, _, _ in SEEN]
    assert set(seen) == {r["prompt"] for r in ROWS}  # both rows, though their prompts' ids are the same
    assert trainer.prompts.ids[0] == trainer.prompts.ids[1]
    assert rollout.rows == batch and seen == [ROWS[i % 2]["prompt"] for i in batch]  # the rows alternate


def test_a_verifier_reads_its_rows_answer(rlhf_stack, tmp_path):
    """A function with a parameter named like a column gets the row's value (TRL passes dataset columns
    so); one with **kwargs gets every column but the prompt."""
    trainer = two_row_trainer(rlhf_stack, tmp_path, "verifier")
    batch = trainer.prompt_batch(1)
    SEEN.clear()
    trainer.experience(trainer.rollout(batch))
    assert [(p, c) for p, _, c in SEEN] == [
        (ROWS[i % 2]["prompt"], {"answer": ROWS[i % 2]["answer"]}) for i in batch
    ]
    trainer = two_row_trainer(rlhf_stack, tmp_path, "recorder")
    SEEN.clear()
    trainer.experience(trainer.rollout(batch))
    assert [c for _, _, c in SEEN] == [{"answer": ROWS[i % 2]["answer"]} for i in batch]


def test_a_function_taking_a_column_the_prompts_lack_is_refused_at_start_up(rlhf_stack, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(UsageError, match="takes 'answer', which the prompt rows do not have"):
        PPOTrainer.create(config(rlhf_stack, out, reward_functions=(f"{__name__}:verifier",)))
    assert not out.exists()


def test_columns_reach_plain_batched_and_async_functions_and_two_argument_ones_keep_working():
    from rlhfkit.tasks.rewards import RewardFunction

    rows = [{"prompt": "p", "answer": "4", "level": 1}, {"prompt": "q", "answer": "5", "level": 2}]

    def named(prompt, response, answer, unused=None):
        return float(response == answer)

    def every(p, r, **columns):
        assert set(columns) == {"answer", "level"}  # the prompt is the first argument, not a column
        return float(columns["level"])

    @batched
    def lists(prompts, responses, answer):
        return [float(r == a) for r, a in zip(responses, answer, strict=True)]

    async def awaited(prompt, response, level):
        return float(level)

    def plain(prompt, response):
        return 1.0

    call = lambda fn: call_reward_function(RewardFunction("m:f", fn), ["p", "q"], ["4", "4"], rows=rows)  # noqa: E731
    assert call(named) == [1.0, 0.0]
    assert call(every) == [1.0, 2.0]
    assert call(lists) == [1.0, 0.0]
    assert call(awaited) == [1.0, 2.0]
    assert call(plain) == [1.0, 1.0]
    assert RewardFunction("m:f", named).parameters == (("answer", "unused"), ("answer",), False)


def test_weights_follow_their_components_by_name_not_by_order(rlhf_stack, tmp_path):
    trainer = PPOTrainer.create(
        config(
            rlhf_stack,
            tmp_path / "names",
            reward_functions=("helpers:great_reward",),
            reward_weights=(0.5, 3.0),
        )
    )
    model, great = torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0])
    # 0.5 * model + 3 * great whatever order the components come in
    expected = [0.5 * 1 + 3 * 10, 0.5 * 2 + 3 * 20]
    assert trainer.rewards.total({"model": model, "great_reward": great}).tolist() == expected
    assert trainer.rewards.total({"great_reward": great, "model": model}).tolist() == expected


def test_an_error_that_is_not_the_users_propagates_with_its_type(rlhf_stack, tmp_path, monkeypatch):
    """Only a reward function's failure becomes a one-line StepFailed; a bug in the RM's scoring (or an
    out-of-memory) keeps its type and traceback."""
    trainer = PPOTrainer.create(config(rlhf_stack, tmp_path / "bug"))
    rollout = trainer.rollout(trainer.prompt_batch(1))

    def broken(ids, mask, packed=False):
        raise RuntimeError("CUDA out of memory (pretend)")

    monkeypatch.setattr(trainer.roles, "scores", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.experience(rollout)


# --- the critic's scale -----------------------------------------------------------------------------------


def test_a_critic_from_the_rm_reads_its_values_on_the_weighted_scale(rlhf_stack, tmp_path, caplog):
    """reward_weights=2 with the RM alone: the scores are 2 * normalised RM scores, so the critic (the RM at
    iteration 0) reads 2 * (v - mean) / std, not (v - mean) / std; with a function added it is warned."""
    import logging

    from rlhfkit.models import scalar_values

    caplog.set_level(logging.WARNING, logger="rlhfkit")
    trainer = PPOTrainer.create(
        config(rlhf_stack, tmp_path / "w", normalize_reward=True, reward_weights=(2.0,))
    )
    stats = read_run_file(rlhf_stack[1])["reward_stats"]
    rollout = trainer.rollout(trainer.prompt_batch(1))
    experience, _ = trainer.experience(rollout)
    with torch.no_grad():
        raw = scalar_values(trainer.roles.trainable.value, rollout.input_ids, rollout.attention_mask)
    reads = raw[:, experience.context - 1 : -1]  # (B, T) the state before each response token
    expected = 2.0 * (reads - stats["mean"]) / stats["std"]
    mask = experience.mask
    torch.testing.assert_close(experience.old_values[mask], expected[mask], rtol=1e-5, atol=1e-5)
    # the RM alone, weighted 2: the critic's scale follows the weight, nothing to warn about
    assert "knows only its part of the score" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        PPOTrainer.create(
            config(
                rlhf_stack, tmp_path / "f", normalize_reward=True, reward_functions=("helpers:great_reward",)
            )
        )
    assert caplog.text.count("knows only its part of the score") == 1


# --- where a finished response is read: rm, the re-encoding path and PPO's shared path agree ---------------


def test_a_chatml_pair_ends_at_the_end_of_turn_where_ppo_stops_and_scores(tiny_tokenizer):
    """`rm` appended EOS after `<|im_end|>\\n`, while PPO stopping on `<|im_end|>` reads the score there."""
    from rlhfkit.data import encode_pairs, encode_prompts
    from rlhfkit.data.encode import scored_sequence

    tok = chatml(tiny_tokenizer)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    messages = [{"role": "user", "content": "the movie was"}]
    record = {
        "prompt": messages,
        "chosen": [{"role": "assistant", "content": "great"}],
        "rejected": [{"role": "assistant", "content": "awful"}],
    }
    [pair] = encode_pairs([record], tok, 64)
    [prompt] = encode_prompts([{"messages": messages}], tok, 64)
    response = tok("great", add_special_tokens=False)["input_ids"]
    # what rm trains on is the prompt PPO samples from, the response, and the stop token PPO ends it with
    assert pair.chosen == prompt + response + [im_end]
    # the re-encoding path closes a finished response the same way, and leaves an unfinished one open
    assert scored_sequence(messages, "great", tok) == pair.chosen
    assert scored_sequence(messages, "great", tok, finished=False) == prompt + response
    from rlhfkit.data.encode import end_of_turn

    assert end_of_turn(tok) == im_end and end_of_turn(tiny_tokenizer) == tiny_tokenizer.eos_token_id


def test_the_shared_path_reads_a_finished_response_at_the_token_rm_read_it_at(tiny_tokenizer):
    """PPO's own ids as `rm` read its pairs: a special stop (EOS, `<|im_end|>`) is replaced by the end `rm`
    appends — EOS after a text prompt, the end of turn after a conversation —, a no-op when it is that end; a
    stop string (".") is content: kept, the end appended after it (one column more); an unfinished row is
    left as it is."""
    from rlhfkit.rollout.completions import ended

    eos, dot, pad = tiny_tokenizer.eos_token_id, 7, tiny_tokenizer.pad_token_id
    im_end = 99
    special = torch.tensor([pad, eos, im_end])
    ids = torch.tensor([[1, 5, dot, pad], [1, 5, 6, eos], [1, 5, 6, 8], [pad, 1, 5, dot], [pad, 1, 5, eos]])
    mask = (ids != pad).long()
    stopped = torch.tensor([True, True, False, True, True])
    ends = torch.tensor([eos, eos, eos, im_end, im_end])  # rows 0-2 text prompts, rows 3-4 conversations
    read, read_mask = ended(ids, mask, stopped, ends, special)
    # the new last column holds the row's end as padding (mask 0) where nothing was appended
    assert read.tolist() == [
        [1, 5, dot, eos, eos],
        [1, 5, 6, eos, eos],
        [1, 5, 6, 8, eos],
        [pad, 1, 5, dot, im_end],
        [pad, 1, 5, im_end, im_end],
    ]
    assert read_mask.tolist() == [
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
    ]
    # special stops only: replaced in place, no column added (the default path, EOS, unchanged)
    same, same_mask = ended(ids[[1, 2, 4]], mask[[1, 2, 4]], stopped[[1, 2, 4]], ends[[1, 2, 4]], special)
    assert same.tolist() == [[1, 5, 6, eos], [1, 5, 6, 8], [pad, 1, 5, im_end]]
    assert torch.equal(same_mask, mask[[1, 2, 4]])


@pytest.fixture(scope="module")
def short_rm(tmp_path_factory):
    """An untrained RM (a fixed random head) on another tokenizer whose model has 5 positions only."""
    from rlhfkit.models import load_scalar_model, tiny_llama, train_tokenizer

    folder = tmp_path_factory.mktemp("short")
    texts = [r["prompt"] + r["completion"] for r in sentiment_rows(300, seed=4)]
    tokenizer = train_tokenizer(texts, vocab_size=280)
    tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2, max_positions=5).save_pretrained(
        folder / "base"
    )
    tokenizer.save_pretrained(folder / "base")
    torch.manual_seed(1)
    rm = load_scalar_model(str(folder / "base"), tokenizer)
    rm.save_pretrained(folder / "rm")
    tokenizer.save_pretrained(folder / "rm")
    return str(folder / "rm")


def test_the_re_encoding_path_by_chunks_truncates_from_the_start_and_leaves_unfinished_responses_open(
    rlhf_stack, tmp_path, short_rm
):
    """8 episodes of 2 tokens (mostly unfinished) in chunks of 3, for an RM of 5 positions: each chunk its
    own text, each sequence its last 5 tokens, no EOS where no stop token came."""
    from rlhfkit.data import pad
    from rlhfkit.models import load_scalar_model, load_tokenizer, sequence_scores

    trainer = PPOTrainer.create(
        config(rlhf_stack, tmp_path / "short", reward_model=short_rm, response_length=2, forward_batch_size=3)
    )
    assert trainer.roles.rm_max_length == 5
    rollout = trainer.rollout(trainer.prompt_batch(1))
    experience, _ = trainer.experience(rollout)  # steps 3-7, the RM's passes by chunks of 3
    assert not rollout.stopped.all()
    policy, own = trainer.roles.tokenizer, load_tokenizer(short_rm)
    rm = load_scalar_model(short_rm, own).eval()
    expected = []
    for row in range(8):
        prompt = trainer.prompts.records[rollout.rows[row]]["prompt"]
        valid = rollout.response_ids[row][rollout.response_mask[row]]
        stopped = bool(rollout.stopped[row])
        text = policy.decode(valid[:-1] if stopped else valid)
        ids = own(prompt)["input_ids"] + own(text, add_special_tokens=False)["input_ids"]
        ids = (ids + [own.eos_token_id] if stopped else ids)[-5:]  # the end kept, the start cut
        with torch.no_grad():
            expected.append(sequence_scores(rm, *pad([ids], own.pad_token_id)).item())
    assert experience.scores.tolist() == pytest.approx(expected, abs=1e-5)


# --- a chat template whose end of turn is not EOS: PPO reads the RM where `rm` read it ---------------------


@pytest.fixture(scope="module")
def chatml_stack(tiny_dir, tmp_path_factory):
    """(policy, RM, prompts): a random tiny policy on the ChatML tokenizer, a random RM on the same tokens (a
    fixed random head: its score depends on the last token), and 12 conversation rows then 12 text rows."""
    from rlhfkit.models import load_scalar_model, load_tokenizer, tiny_llama

    folder = tmp_path_factory.mktemp("chatml")
    tok = chatml(load_tokenizer(tiny_dir))
    torch.manual_seed(0)
    tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(folder / "policy")
    tok.save_pretrained(folder / "policy")
    torch.manual_seed(1)
    load_scalar_model(str(folder / "policy"), tok).save_pretrained(folder / "rm")
    tok.save_pretrained(folder / "rm")
    rows = [{"messages": [{"role": "user", "content": f"the movie {i} was"}]} for i in range(12)]
    rows += [{"prompt": f"the book {i} was"} for i in range(12)]
    return str(folder / "policy"), str(folder / "rm"), write_jsonl(folder / "prompts.jsonl", rows)


def forced_responses(rollout, tokenizer, stops: list[int | None]) -> None:
    """Set `rollout`'s responses (T = 4) to ` great movie` then, row by row, the stop token `stops[row]`, or
    nothing (None: unfinished, ` great movie great movie`)."""
    words = tokenizer(" great movie", add_special_tokens=False)["input_ids"][:2]
    rows = [words + ([stop, tokenizer.pad_token_id] if stop is not None else words) for stop in stops]
    rollout.response_ids = torch.tensor(rows)  # (B, 4)
    rollout.response_mask = torch.tensor([[True, True, True, stop is None] for stop in stops])  # (B, 4)
    rollout.stopped = torch.tensor([stop is not None for stop in stops])  # (B,)
    rollout.logprobs = torch.zeros(len(stops), 4)  # (B, 4)


def read_by_hand(sequence: list[int], stop: int | None, chat: bool, tokenizer, dot: int) -> list[int]:
    """Where `rm` read its pairs: after a text prompt at EOS, in a conversation at `<|im_end|>`; a special
    stop replaced by that end, a stop string kept and the end appended, an unfinished response as it is."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>") if chat else tokenizer.eos_token_id
    if stop is None:
        return sequence
    return sequence + [end] if stop == dot else sequence[:-1] + [end]


def test_ppo_on_chatml_stops_at_the_end_of_turn_and_reads_text_and_conversation_rows_as_rm_did(
    chatml_stack, tmp_path
):
    """Review findings 2 and 3: the shared path on ChatML, conversation and text rows mixed, each stop kind.
    Without `ended`, with every row taken for a conversation (or none), or with the end of turn taken for
    EOS, some row is read at another token and its score moves. PPO stops at `<|im_end|>` unasked."""
    from rlhfkit.config import PPOConfig
    from rlhfkit.data import pad

    policy, rm, prompts = chatml_stack
    trainer = PPOTrainer.create(
        PPOConfig(
            policy=policy, reward_model=rm, prompts=prompts, out=str(tmp_path / "o"), batch_size=8,
            mini_batch_size=4, response_length=4, normalize_reward=False, eval_every=0, max_steps=1,
            stop_tokens=(".",),
        )
    )  # fmt: skip
    tok = trainer.roles.tokenizer
    im_end, dot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids(".")
    assert trainer.roles.rm_tokenizer is None and im_end in trainer.engine.stop_ids.tolist()
    rollout = trainer.rollout([0, 1, 2, 3, 12, 13, 14, 15])  # 4 conversations, then 4 text prompts
    kinds = [tok.eos_token_id, im_end, dot, None] * 2  # each stop kind after each kind of prompt
    forced_responses(rollout, tok, kinds)
    scores = trainer.rewards.components(rollout, [slice(0, 8)])["model"]
    for row in range(8):
        sequence = rollout.input_ids[row][rollout.attention_mask[row].bool()].tolist()
        chat = "messages" in trainer.prompts.records[rollout.rows[row]]
        assert chat == (row < 4)
        read = read_by_hand(sequence, kinds[row], chat, tok, dot)
        with torch.no_grad():
            expected = trainer.roles.scores(*pad([read], tok.pad_token_id, "right")).item()
        assert scores[row].item() == pytest.approx(expected, abs=1e-4), (row, kinds[row], chat)


def test_a_re_encoding_rm_reads_a_conversation_at_its_own_end_of_turn(rlhf_stack, tmp_path, chatml_stack):
    """The policy (the tiny template, turns closed by EOS) and a ChatML RM: a conversation re-encoded in the
    RM's template ends at its `<|im_end|>`, a text prompt's response at its EOS; a "." stop is kept in the
    text. Taking the RM's end from the policy (EOS) would read the conversations elsewhere."""
    from rlhfkit.models import load_tokenizer

    _, rm, _ = chatml_stack
    rows = [{"messages": [{"role": "user", "content": "the movie was"}]}, {"prompt": "the book was"}] * 8
    prompts = write_jsonl(tmp_path / "mixed.jsonl", rows)
    trainer = PPOTrainer.create(
        config(
            rlhf_stack, tmp_path / "re", reward_model=rm, prompts=prompts, response_length=4,
            stop_tokens=(".",),
        )
    )  # fmt: skip
    policy, own = trainer.roles.tokenizer, load_tokenizer(rm)
    assert trainer.roles.rm_tokenizer is not None  # another template: re-encoded
    rollout = trainer.rollout([0, 1, 2, 3, 4, 5, 6, 7])  # conversation, text, conversation, ...
    dot = policy.convert_tokens_to_ids(".")
    stops = [policy.eos_token_id, dot, None, policy.eos_token_id]  # rows 2k and 2k + 1 end with stops[k]
    forced_responses(rollout, policy, [stops[row // 2] for row in range(8)])
    scores = trainer.rewards.components(rollout, [slice(0, 8)])["model"]
    text = policy.decode(policy(" great movie", add_special_tokens=False)["input_ids"][:2])
    im_end = own.convert_tokens_to_ids("<|im_end|>")
    for row in range(8):
        stop = stops[row // 2]
        response = text + ("." if stop == dot else "") + (text if stop is None else "")
        if row % 2 == 0:  # the conversation in ChatML, the assistant turn closed by <|im_end|> when finished
            start = "<|im_start|>user\nthe movie was<|im_end|>\n<|im_start|>assistant\n"
            ids = own(start + response, add_special_tokens=False)["input_ids"]
            ids += [im_end] if stop is not None else []
        else:  # the text prompt with the RM's BOS, closed by its EOS when finished
            ids = own("the book was")["input_ids"] + own(response, add_special_tokens=False)["input_ids"]
            ids += [own.eos_token_id] if stop is not None else []
        with torch.no_grad():
            expected = trainer.roles.scores(*pad_one(ids, own.pad_token_id)).item()
        assert scores[row].item() == pytest.approx(expected, abs=1e-5), row


def test_eval_stops_at_the_end_of_turn_and_reads_the_rm_as_ppo_does(chatml_stack, tmp_path, monkeypatch):
    """Review finding 3: `eval` stopped at EOS only and read the RM at whatever token came last; it now stops
    at `<|im_end|>` too and reads each finished response where `rm` read its pairs (as PPO does)."""
    import rlhfkit.jobs.evaluate as job
    from rlhfkit.config import EvalConfig
    from rlhfkit.models import load_scalar_model, load_tokenizer, sequence_scores

    policy, rm, _ = chatml_stack
    tok = load_tokenizer(policy)
    eos, im_end = tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")
    stops = [eos, im_end, im_end, None]  # after a conversation, a text prompt, a conversation, a text prompt
    seen = []

    class Forced(job.LocalSampler):
        def generate(self, prompts, settings, generator=None, noise=None, width=None):
            seen.append((self.stop_ids.tolist(), prompts))
            rollout = super().generate(prompts, settings, generator, noise, width)
            forced_responses(rollout, tok, stops)
            return rollout

    monkeypatch.setattr(job, "LocalSampler", Forced)
    rows = [{"messages": [{"role": "user", "content": "the movie was"}]}, {"prompt": "the book was"}] * 2
    prompts = write_jsonl(tmp_path / "eval.jsonl", rows)
    result = job.evaluate(EvalConfig(model=policy, prompts=prompts, reward_model=rm, response_length=4))
    [(stop_ids, prompt_ids)] = seen
    assert stop_ids == sorted([eos, im_end])
    model = load_scalar_model(rm, tok).eval()
    words = tok(" great movie", add_special_tokens=False)["input_ids"][:2]
    for row, sample in enumerate(result["samples"]):
        stop = stops[row]
        response = words + ([stop] if stop is not None else words)
        read = read_by_hand(prompt_ids[row] + response, stop, row % 2 == 0, tok, dot=-1)
        with torch.no_grad():
            expected = sequence_scores(model, *pad_one(read, tok.pad_token_id)).item()
        assert sample["reward"] == pytest.approx(expected, abs=1e-4), row


def pad_one(ids: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    from rlhfkit.data import pad

    return pad([ids], pad_id, "right")


def test_tokenizers_with_another_eos_or_end_of_turn_are_not_the_same_tokens(tiny_tokenizer):
    """Review finding 5: an RM reading the policy's ids is read at the policy's ends; same vocabulary and
    template but another EOS (or another end of turn) must send it through its own tokens."""
    import copy

    from rlhfkit.algorithms.ppo.roles import same_tokens

    other_eos = copy.deepcopy(tiny_tokenizer)
    other_eos.eos_token = "<|system|>"  # a token of the same vocabulary
    assert same_tokens(tiny_tokenizer, copy.deepcopy(tiny_tokenizer))
    assert not same_tokens(tiny_tokenizer, other_eos)
    a = chatml(tiny_tokenizer)
    b = copy.deepcopy(tiny_tokenizer)  # the same ids and template, but `<|im_end|>` is not special: its
    b.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=False)  # turns end at EOS
    b.chat_template = a.chat_template
    assert a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id
    assert same_tokens(a, copy.deepcopy(a))
    assert not same_tokens(a, b)


def test_label_writes_conversation_pairs_that_rm_reads_where_ppo_reads_them(
    chatml_stack, tmp_path, monkeypatch
):
    """Review 3, finding 1: `label` wrote a conversation prompt as rendered text, so `rm` read the pair on the
    text path (BOS, no assistant header, closed by EOS) while PPO reads the policy's turn at `<|im_end|>`.
    It now writes the conversation and two assistant turns; `encode_pairs` of its rows must be exactly the
    PPO prompt + the response + `<|im_end|>`, and a text prompt stays a text pair closed by EOS."""
    import json

    import rlhfkit.jobs.label as job
    from rlhfkit.config import LabelConfig
    from rlhfkit.data import encode_pairs, load_records
    from rlhfkit.data.encode import encode_prompts
    from rlhfkit.models import load_tokenizer

    policy, _, _ = chatml_stack
    tok = load_tokenizer(policy)
    eos, im_end = tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")
    good, bad = (tok(w, add_special_tokens=False)["input_ids"] for w in (" great", " awful"))
    length = max(len(good), len(bad)) + 1  # T

    class Forced(job.LocalSampler):  # every pair: " great" + stop and " awful" + stop (gold tells them apart)
        def generate(self, prompts, settings, generator=None, noise=None, width=None):
            rollout = super().generate(prompts, settings, generator, noise, width)
            rows = len(prompts)
            chat = [tok.decode(p).startswith("<|im_start|>") for p in prompts]
            stops = [im_end if c else eos for c in chat]
            ids = [(good if r % 2 == 0 else bad) + [stops[r]] for r in range(rows)]
            rollout.response_ids = torch.tensor([i + [tok.pad_token_id] * (length - len(i)) for i in ids])
            rollout.response_mask = torch.tensor([[True] * len(i) + [False] * (length - len(i)) for i in ids])
            rollout.stopped = torch.ones(rows, dtype=torch.bool)
            rollout.logprobs = torch.zeros(rows, length)
            return rollout

    monkeypatch.setattr(job, "LocalSampler", Forced)
    rows = [{"messages": [{"role": "user", "content": "the movie was"}]}, {"prompt": "the book was"}]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "prefs.jsonl"
    job.label(
        LabelConfig(
            policy=policy, prompts=prompts, gold="rlhfkit.tasks.sentiment:gold", out=str(out),
            response_length=length, tau=0.0, batch_size=2,
        )
    )  # fmt: skip
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert isinstance(written[0]["prompt"], list) and written[0]["chosen"][0]["role"] == "assistant"
    assert isinstance(written[1]["prompt"], str) and isinstance(written[1]["chosen"], str)
    pairs = encode_pairs(load_records(str(out), "preference"), tok, 64)
    ppo_prompts = encode_prompts(rows, tok, 64)
    for pair, prompt, chat in zip(pairs, ppo_prompts, (True, False), strict=True):
        end = im_end if chat else eos
        assert pair.chosen == prompt + good + [end]  # gold prefers " great"
        assert pair.rejected == prompt + bad + [end]
