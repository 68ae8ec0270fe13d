"""LoRA under FSDP2 (two gloo processes on CPU, the shipped fsdp.yaml): the frozen bases and the adapters are
sharded alike, the reference and the RM are still the bases with their adapters off, and a run equals one
process's: its metrics, its adapter folders and its merged folders (gathered whole and saved through an
unsharded twin of each adapted model), and a run stopped under FSDP resumes to the uninterrupted one."""

from pathlib import Path

import pytest
import torch
from test_multiprocess import (
    CONFIGS,
    PPO,
    assert_close_records,
    assert_same_weights,
    fsdp,
    launch,
    records,
    stop_after_two_iterations,
)

from helpers import great_rows, ppo_args, sentiment_rows, write_jsonl


def assert_same_adapter(one: Path, two: Path) -> None:
    """The two adapter folders hold the same trained tensors (adapters, a scalar head's trained copy)."""
    from safetensors.torch import load_file

    first, second = (load_file(f / "adapter_model.safetensors") for f in (one, two))
    assert sorted(first) == sorted(second) and first
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=1e-4, atol=1e-5)


LORA = ["lora.r=4", "lora.alpha=8"]


@pytest.mark.parametrize(
    "command, dtype",
    [("sft", "float32"), ("rm", "float32"), ("dpo", "float32"), ("dpo", "bfloat16"), ("sft-gpt2", "float32")],
)
def test_a_lora_stage_under_fsdp_matches_one_process(rlhf_stack, tiny_gpt2_dir, tmp_path, command, dtype):
    """sft and dpo adapt the SFT model (dpo's reference: its adapter off), rm the RM (a trained copy of its
    head). With bf16 bases FSDP shards parameters of two dtypes in one unit; bf16 sums in another order
    then differ by more than fp32 rounding. GPT-2: Conv1D layers, a tied head, and a forward whose second
    positional argument is its cache."""
    command, gpt2 = command.removesuffix("-gpt2"), command.endswith("-gpt2")
    rows = sentiment_rows(64) if command == "sft" else great_rows(64)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    model = tiny_gpt2_dir if gpt2 else rlhf_stack[1] if command == "rm" else rlhf_stack[0]
    args = ["--model", model, "--data", data, "max_steps=3", "batch_size=16", "eval_every=2",
            "optim.lr=3e-3", f"model_dtype={dtype}", *LORA]  # fmt: skip
    launch([command, "--out", str(tmp_path / "one"), *args], processes=1)
    launch([command, "--out", str(tmp_path / "two"), *args], engine=fsdp)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert one[-1]["loss"] != one[0]["loss"]  # the adapters learned
    rel = 1e-5 if dtype == "float32" else 1e-3
    assert_close_records(one, two, rel=rel, keys=["loss", "grad_norm"])
    assert_same_adapter(tmp_path / "one" / "adapter", tmp_path / "two" / "adapter")
    assert_same_weights(tmp_path / "one", tmp_path / "two")  # the merged folders


def test_ppo_with_lora_under_fsdp_matches_one_process(rlhf_stack, tmp_path):
    """GAE: the actor and the critic are the SFT model and the RM with adapters; the reference and the RM are
    the same sharded bases with the adapters off (KL exactly 0 before the first update)."""
    args = [*LORA, "actor_lr=1e-3", "critic_lr=1e-3", *PPO]
    launch(ppo_args(rlhf_stack, tmp_path / "one", *args), processes=1)
    launch(ppo_args(rlhf_stack, tmp_path / "two", *args), engine=fsdp)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert two[0]["objective/kl"] == 0.0 and two[-1]["objective/kl"] != 0.0
    assert_close_records(one[:1], two[:1], rel=1e-5)
    assert_close_records(one[1:], two[1:], rel=1e-3)
    for role in ("actor", "critic"):
        assert_same_weights(tmp_path / "one" / role, tmp_path / "two" / role)
        assert_same_adapter(tmp_path / "one" / f"{role}-adapter", tmp_path / "two" / f"{role}-adapter")


def test_a_lora_run_stopped_under_fsdp_resumes_to_the_uninterrupted_metrics(rlhf_stack, tmp_path):
    """With activation checkpointing on, as a large model would run: its wrappers rename the blocks'
    parameters, which checkpoints must not carry (a resumed run would not find its adapters)."""
    config = tmp_path / "fsdp-checkpointing.yaml"
    shipped = (CONFIGS / "fsdp.yaml").read_text()
    config.write_text(shipped.replace("activation_checkpointing: false", "activation_checkpointing: true"))
    assert config.read_text() != shipped

    def engine(args: list[str]) -> list[str]:
        return fsdp(args, config)

    args = [*LORA, "actor_lr=1e-3", "critic_lr=1e-3", *PPO[:-2], "--max-steps", "4"]
    launch(ppo_args(rlhf_stack, tmp_path / "whole", *args), engine=engine)
    out = tmp_path / "stopped"
    state = stop_after_two_iterations(engine(ppo_args(rlhf_stack, out, *args)), out)
    assert state["model"] and all("lora_" in k or ".score." in k for k in state["model"])  # trained only
    assert not any("_checkpoint_wrapped_module" in k for k in state["model"])
    launch(ppo_args(rlhf_stack, out, *args, "--resume"), engine=engine)
    assert records(out) == records(tmp_path / "whole")
    assert_same_adapter(tmp_path / "whole" / "actor-adapter", out / "actor-adapter")


def test_online_dpo_with_lora_under_fsdp_matches_one_process(rlhf_stack, tmp_path):
    """Online DPO samples with the sharded policy gathered whole, its reference is the adapter switched off,
    and its folders are the actor's (`OUT` merged, `OUT/adapter`)."""
    sft, rm, prompts = rlhf_stack
    args = ["--model", sft, "--prompts", prompts, "--reward-model", rm, "max_steps=3", "batch_size=8",
            "samples_per_prompt=4", "response_length=8", "eval_every=2", "optim.lr=1e-3", "grad_accum=2",
            *LORA]  # fmt: skip
    launch(["dpo", "--out", str(tmp_path / "one"), *args], processes=1)
    launch(["dpo", "--out", str(tmp_path / "two"), *args], engine=fsdp)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert one[-1]["loss"] != one[0]["loss"]
    assert_close_records(one[:1], two[:1], rel=1e-5)
    assert_close_records(one[1:], two[1:], rel=1e-3)
    assert_same_adapter(tmp_path / "one" / "adapter", tmp_path / "two" / "adapter")
    assert_same_weights(tmp_path / "one", tmp_path / "two")
