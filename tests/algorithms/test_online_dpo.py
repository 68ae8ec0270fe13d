"""Online DPO: the policy's own samples, scored by `ppo`'s reward components, paired best against worst;
the first step is at the reference, and the reward the pairs prefer rises."""

import math

import pytest

from helpers import prompt_rows, write_jsonl
from rlhfkit.algorithms.dpo import dpo
from rlhfkit.cli import main
from rlhfkit.config import DPOConfig, LoraConfig, OptimConfig
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.outputs import read_run_file


def online(rlhf_stack, out, **overrides) -> DPOConfig:
    sft, rm, prompts = rlhf_stack
    settings = dict(
        reward_functions=("helpers:great_reward",),
        max_steps=15,
        batch_size=16,
        samples_per_prompt=4,
        optim=OptimConfig(lr=1e-3, warmup_ratio=0),
        eval_every=5,
        response_length=8,
    )
    return DPOConfig(model=sft, prompts=prompts, out=str(out), **{**settings, **overrides})


@pytest.fixture(scope="module")
def online_run(rlhf_stack, tmp_path_factory):
    return dpo(online(rlhf_stack, tmp_path_factory.mktemp("online") / "out"))


def test_the_first_step_is_at_the_reference(online_run):
    first = next(r for r in read_metrics(online_run / "metrics.jsonl") if r["pairs"] > 0)
    # the first step with pairs samples from the starting policy = the reference: x = 0, loss log 2
    assert first["step"] == 1 and first["objective/kl"] == 0.0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == 0 and first["rewards/margins"] == 0


def test_every_group_gives_a_pair_or_a_tie(online_run):
    groups = 16 // 4
    for record in read_metrics(online_run / "metrics.jsonl"):
        assert record["pairs"] + record["pairs/ties"] * groups == pytest.approx(groups)
        assert ("loss" in record) == (record["pairs"] > 0)  # no pair, no step and no DPO metrics


def test_the_preferred_reward_rises_and_the_policy_leaves_the_reference(online_run):
    records = read_metrics(online_run / "metrics.jsonl")
    evaluations = [r["eval/score"] for r in records if "eval/score" in r]
    # great_reward counts the word "great": the SFT model says it in about a fifth of its responses
    assert evaluations[-1] > records[0]["objective/scores"] + 0.3
    assert records[-1]["objective/kl"] > 0.5
    assert {"reward/great_reward", "objective/entropy", "response/stop_rate"} <= set(records[-1])


def test_the_output_is_a_causal_lm_folder(online_run):
    assert load_causal_lm(str(online_run), load_tokenizer(str(online_run))) is not None
    run = read_run_file(online_run)
    assert run["command"] == "dpo" and run["finished"] and "eval/score" in run["final"]
    assert (online_run / "samples.jsonl").is_file() and not (online_run / "checkpoints").exists()
    from huggingface_hub import ModelCard

    card = ModelCard.load(online_run / "README.md").data
    assert card.tags[:2] == ["rlhfkit", "online-dpo"] and card.library_name == "transformers"


def test_with_a_reward_model_and_lora_the_reference_is_the_base(rlhf_stack, tmp_path):
    out = dpo(
        online(rlhf_stack, tmp_path / "lora", reward_model=rlhf_stack[1], lora=LoraConfig(r=4), max_steps=3)
    )
    records = read_metrics(out / "metrics.jsonl")
    first = next(r for r in records if r["pairs"] > 0)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and records[0]["objective/kl"] == 0.0
    assert {"reward/model", "reward/great_reward"} <= set(records[0])
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
    from huggingface_hub import ModelCard

    assert ModelCard.load(out / "adapter" / "README.md").data.library_name == "peft"


def test_online_dpo_without_a_reward_is_one_line_status_2(rlhf_stack, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", prompt_rows(8))
    out = tmp_path / "out"
    assert main(["dpo", "--model", rlhf_stack[0], "--prompts", prompts, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rlhfkit dpo: error: give a reward_model, reward_functions, or both" and not out.exists()
