"""Offline DPO: the policy starts at the reference (the first loss is log 2 exactly), learns the preference,
splits a batch into micro-batches without changing the step, and reads a conversation's response where
the assistant turn begins."""

import json
import math

import pytest
import torch

from helpers import great_rows, write_jsonl
from rlhfkit.algorithms.dpo import dpo
from rlhfkit.algorithms.dpo.loss import response_logprobs_sum
from rlhfkit.config import DPOConfig, LoraConfig, OptimConfig
from rlhfkit.data import encode_pairs
from rlhfkit.errors import ConfigError, UsageError
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.outputs import read_run_file


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dpo-data")
    return write_jsonl(folder / "train.jsonl", great_rows(160, seed=1)), write_jsonl(
        folder / "eval.jsonl", great_rows(48, seed=2)
    )


def config(model, data, out, **overrides) -> DPOConfig:
    settings = dict(max_steps=12, batch_size=16, optim=OptimConfig(lr=1e-3), eval_every=6)
    return DPOConfig(model=model, data=data[0], eval_data=data[1], out=str(out), **{**settings, **overrides})


@pytest.fixture(scope="module")
def dpo_run(rlhf_stack, pairs, tmp_path_factory):
    return dpo(config(rlhf_stack[0], pairs, tmp_path_factory.mktemp("dpo") / "out", nll_coef=0.2))


def test_the_first_step_is_at_the_reference_and_training_learns_the_preference(dpo_run):
    metrics = read_metrics(dpo_run / "metrics.jsonl")
    first, last = metrics[0], [m for m in metrics if "eval/loss" in m][-1]
    # policy = reference before the first step: x = 0, the DPO loss is −logσ(0) = log 2 and every reward 0;
    # the RPO term adds 0.2 × the chosen responses' token-mean NLL
    assert first["rewards/margins"] == 0 and first["rewards/chosen"] == 0
    assert first["loss"] == pytest.approx(math.log(2) + 0.2 * first["nll_loss"], abs=1e-6)
    assert last["eval/rewards/accuracies"] >= 0.9 and last["eval/rewards/margins"] > 0.1
    assert last["eval/loss"] < first["loss"]
    run = read_run_file(dpo_run)
    assert run["command"] == "dpo" and run["finished"] and run["train_pairs"] == 160
    # a causal-LM folder, the reference log-probs gone with the checkpoints
    assert load_causal_lm(str(dpo_run), load_tokenizer(str(dpo_run))) is not None
    assert not (dpo_run / "checkpoints").exists()
    from huggingface_hub import ModelCard

    card = ModelCard.load(dpo_run / "README.md")
    assert card.data.tags[:2] == ["rlhfkit", "dpo"] and f"{run['final']['eval/loss']:.6g}" in card.text


def test_metrics_carry_trl_names(dpo_run):
    names = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen"}
    record = read_metrics(dpo_run / "metrics.jsonl")[-1]
    assert names | {"logps/rejected", "loss"} <= set(record)
    assert {f"eval/{n}" for n in names} <= set(record)


def test_response_logprobs_are_summed_from_the_response_start(tiny_dir):
    """Two right-padded sequences of different lengths: the sum covers tokens start.. of each, nothing of the
    prompt or the padding, and equals the sum of a hand gather of the unpadded sequence's log-softmax."""
    tokenizer = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, tokenizer).eval()
    sequences = [[5, 9, 12, 30, 7], [5, 9, 40]]
    starts = [3, 1]
    with torch.no_grad():
        sums, counts = response_logprobs_sum(
            model, sequences, starts, tokenizer.pad_token_id, torch.device("cpu")
        )
        for row, (seq, start) in enumerate(zip(sequences, starts, strict=True)):
            logits = model(input_ids=torch.tensor([seq])).logits[0]  # (L, V), no padding at all
            logp = torch.log_softmax(logits, -1)
            expected = sum(logp[t - 1, seq[t]] for t in range(start, len(seq)))
            assert sums[row].item() == pytest.approx(expected.item(), abs=1e-5)
    assert counts.tolist() == [2, 2]


def test_micro_batches_give_the_same_step(rlhf_stack, pairs, tmp_path):
    one = dpo(config(rlhf_stack[0], pairs, tmp_path / "one", max_steps=2, eval_every=0))
    four = dpo(config(rlhf_stack[0], pairs, tmp_path / "four", max_steps=2, eval_every=0, grad_accum=4))
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(four / "metrics.jsonl")
    for key in ("loss", "rewards/margins", "grad_norm"):
        assert b[-1][key] == pytest.approx(a[-1][key], rel=1e-4, abs=1e-6)


def test_lora_starts_at_the_reference_and_saves_adapter_and_merged_folders(rlhf_stack, pairs, tmp_path):
    out = dpo(config(rlhf_stack[0], pairs, tmp_path / "lora", max_steps=4, lora=LoraConfig(r=4)))
    first = read_metrics(out / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # adapter B = 0: policy = base
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
    from huggingface_hub import ModelCard

    assert ModelCard.load(out / "adapter" / "README.md").data.library_name == "peft"


def test_a_reference_folder_equal_to_the_model_gives_the_same_run(rlhf_stack, pairs, tmp_path):
    """The reference loaded from its own folder (a copy of the SFT model) for the one pass, then freed."""
    import shutil

    copy = shutil.copytree(rlhf_stack[0], tmp_path / "copy")
    default = dpo(config(rlhf_stack[0], pairs, tmp_path / "a", max_steps=2, eval_every=0))
    named = dpo(config(rlhf_stack[0], pairs, tmp_path / "b", max_steps=2, eval_every=0, reference=str(copy)))
    assert read_metrics(named / "metrics.jsonl")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert read_metrics(named / "metrics.jsonl")[-1]["loss"] == pytest.approx(
        read_metrics(default / "metrics.jsonl")[-1]["loss"], abs=1e-6
    )


def test_a_reference_with_another_tokenizer_is_refused_before_anything_is_written(
    rlhf_stack, pairs, tiny_gpt2_dir, tmp_path
):
    from rlhfkit.models import tiny_llama, train_tokenizer

    other = tmp_path / "other"
    tokenizer = train_tokenizer(["a completely different corpus of words"] * 20, vocab_size=300)
    tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(UsageError, match="another tokenizer"):
        dpo(config(rlhf_stack[0], pairs, tmp_path / "out", reference=str(other)))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"label_smoothing": 0.5}, "label_smoothing must be in [0, 0.5)"),
        ({"label_smoothing": 0.1, "loss_type": "ipo"}, "label_smoothing is for loss_type sigmoid or robust"),
        ({"loss_type": "simpo", "reference": "m"}, "simpo uses no reference"),
        ({"data": None}, "not neither"),
        ({"prompts": "p.jsonl"}, "not both"),
        ({"data": None, "prompts": "p.jsonl"}, "give a reward_model, reward_functions, or both"),
        (
            {"data": None, "prompts": "p.jsonl", "reward_model": "r", "samples_per_prompt": 1},
            "samples_per_prompt must be >= 2",
        ),
        ({"reward_model": "r"}, "reward_model is for online DPO"),
        ({"max_prompt_length": 64}, "max_prompt_length is for online DPO"),  # offline: max_length
        ({"temperature": 0.3}, "temperature is for online DPO"),
        (
            {"data": None, "prompts": "p.jsonl", "reward_model": "r", "max_length": 64},
            "max_length is for offline",
        ),
        (
            {"data": None, "prompts": "p.jsonl", "reward_model": "r", "reference": "x"},
            "reference is for offline DPO",
        ),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        DPOConfig(**{"model": "m", "data": "d.jsonl", "out": "o", **overrides})


def test_a_conversation_pair_is_scored_from_the_assistant_turn(tiny_dir):
    from helpers import chatml

    tokenizer = chatml(load_tokenizer(tiny_dir))
    row = {
        "prompt": [{"role": "user", "content": "the movie was"}],
        "chosen": [{"role": "assistant", "content": "great"}],
        "rejected": [{"role": "assistant", "content": "great and awful"}],
    }
    (pair,) = encode_pairs([row], tokenizer, 256)
    opening = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(opening, add_special_tokens=False)["input_ids"]
    # both responses start with "great": the prompt ends at the generation prompt, not at the shared tokens
    assert pair.prompt_length == len(prompt_ids)
    assert pair.chosen[: len(prompt_ids)] == prompt_ids and pair.rejected[: len(prompt_ids)] == prompt_ids


@pytest.mark.parametrize("lora", [0, 4], ids=["frozen-copy", "adapter-off"])
def test_sampling_evaluation_measures_kl_to_the_reference_and_the_monitors(rlhf_stack, pairs, tmp_path, lora):
    """With `eval_prompts` every evaluation samples the policy: a policy that has not moved (lr 0) is at KL 0
    exactly from its reference (a frozen copy, or with LoRA the base with the adapter off); the monitors'
    values are the functions' on the samples."""
    from helpers import great_reward, prompt_rows

    eval_prompts = write_jsonl(tmp_path / "eval.jsonl", prompt_rows(8, seed=3))
    settings = dict(max_steps=2, eval_every=1, response_length=8, lora=LoraConfig(r=lora))
    still = config(rlhf_stack[0], pairs, tmp_path / "still", optim=OptimConfig(lr=0.0), **settings,
                   eval_prompts=eval_prompts, monitor_functions=("helpers:great_reward",))  # fmt: skip
    out = dpo(still)
    evaluations = [r for r in read_metrics(out / "metrics.jsonl") if "eval/kl" in r]
    assert len(evaluations) == 2 and all(r["eval/kl"] == 0.0 for r in evaluations)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 8
    assert all(s["monitor/great_reward"] == great_reward(s["prompt"], s["response"]) for s in samples)
    mean = sum(s["monitor/great_reward"] for s in samples[:8]) / 8
    assert evaluations[0]["monitor/great_reward"] == pytest.approx(mean)


def test_bad_eval_prompts_are_refused_before_anything_is_written(rlhf_stack, pairs, tmp_path):
    with pytest.raises(UsageError, match="nowhere.jsonl"):
        dpo(config(rlhf_stack[0], pairs, tmp_path / "out", eval_prompts=str(tmp_path / "nowhere.jsonl")))
    assert not (tmp_path / "out").exists()
