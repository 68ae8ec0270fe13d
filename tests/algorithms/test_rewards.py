"""Rewards users bring (reward functions: plain, batched, async; a reward model with its own tokenizer) and
the critic-free estimators (GRPO, RLOO, REINFORCE++) on the PPO loop."""

import asyncio
import math

import pytest
import torch

from helpers import great_rows, ppo_config, sentiment_rows, write_jsonl
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
        (lambda p, r: None, "returned None for prompt"),
        (lambda p, r: math.nan, "returned nan for prompt"),
        (lambda p, r: math.inf, "returned inf for prompt"),
    ],
    ids=["raises", "string", "none", "nan", "inf"],
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
    words = trainer.rewards.responses(rollout, range(8))
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
        response = policy_tokenizer.decode(
            rollout.response_ids[row][rollout.response_mask[row]], skip_special_tokens=True
        )
        ids = (
            rm_tokenizer(prompt)["input_ids"] + rm_tokenizer(response, add_special_tokens=False)["input_ids"]
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


def test_prompts_that_truncate_to_the_same_tokens_are_warned_about(rlhf_stack, tmp_path, caplog):
    """Reward functions find a prompt's row again by its tokens: two different rows cut to the same tokens
    cannot be told apart, and the run says so."""
    import logging

    rows = [{"prompt": f"{word} the movie was"} for word in ("first", "second")] * 10
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        PPOTrainer.create(config(rlhf_stack, tmp_path / "o", prompts=prompts, max_prompt_length=3))
    assert "10 prompts have the same (truncated) tokens as another, different prompt" in caplog.text
