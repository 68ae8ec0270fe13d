"""LoRA on two shared frozen bases: the reference and the RM are the actor's and critic's bases with the
adapters off, bit for bit; only adapters and the critic's head train; saved folders load with transformers
and peft alone."""

import json
from pathlib import Path

import pytest
import torch
from test_ppo import make_config

from cards import check_card, run_example
from helpers import great_rows, ppo_args, sentiment_rows, write_jsonl
from rlhfkit.algorithms.ppo import PPOTrainer, ppo
from rlhfkit.algorithms.ppo.roles import SharedBases
from rlhfkit.cli import main
from rlhfkit.config import LoraConfig
from rlhfkit.models import (
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    scalar_values,
    sequence_scores,
)
from rlhfkit.models.forward import response_logprobs
from rlhfkit.runtime.loop import UpdateGuard
from rlhfkit.runtime.outputs import read_run_file

LORA = LoraConfig(r=4, alpha=8.0)


def lora_trainer(stack, tmp_path, **overrides):
    return PPOTrainer.create(make_config(stack, tmp_path / "ppo", lora=LORA, **overrides))


def frozen_roles(stack):
    """The SFT model and the RM, loaded on their own."""
    tokenizer = load_tokenizer(stack[0])
    return load_causal_lm(stack[0], tokenizer).eval(), load_scalar_model(stack[1], tokenizer).eval()


def test_before_any_update_kl_is_zero_ratio_one_and_the_critic_is_the_rm(rlhf_stack, tmp_path):
    trainer = lora_trainer(rlhf_stack, tmp_path, normalize_reward=False)
    assert isinstance(trainer.roles, SharedBases)
    experience, stats = trainer.experience(trainer.rollout(trainer.prompt_batch(1)))
    assert stats["objective/kl"].item() == 0.0
    assert torch.equal(experience.old_logp, experience.ref_logp)
    # the critic's values at the positions PPO reads are the RM's head read there
    _, reward_model = frozen_roles(rlhf_stack)
    with torch.no_grad():
        rm_values = scalar_values(reward_model, experience.input_ids, experience.attention_mask)
    reads = rm_values[:, experience.context - 1 : -1]
    assert torch.equal(experience.old_values[experience.mask], reads[experience.mask])
    rows = slice(0, trainer.config.mini_batch_size)
    with torch.no_grad():
        logp, _, _ = trainer.opt.model(
            experience.input_ids[rows], experience.attention_mask[rows], experience.context, 0.7
        )
    assert torch.equal(logp[experience.mask[rows]], experience.old_logp[rows][experience.mask[rows]])
    stats = trainer.update(experience, UpdateGuard("test", 3))
    assert stats["policy/first_ratio_deviation"] == 0.0


def test_adapter_off_is_the_loaded_sft_model_and_rm_before_and_after_updates(rlhf_stack, tmp_path):
    trainer = lora_trainer(rlhf_stack, tmp_path, actor_lr=1e-2, critic_lr=1e-2)
    sft_model, reward_model = frozen_roles(rlhf_stack)
    bases = {k: v.clone() for k, v in trainer.roles.trainable.state_dict().items() if "lora_" not in k}

    def check(experience):
        ids, mask, context = experience.input_ids, experience.attention_mask, experience.context
        with torch.no_grad():
            expected_ref = response_logprobs(sft_model, ids, mask, context, 0.7)[0]
            expected_scores = sequence_scores(reward_model, ids, mask)
            assert torch.equal(trainer.roles.reference_logprobs(ids, mask, context, 0.7), expected_ref)
            assert torch.equal(trainer.roles.scores(ids, mask), expected_scores)

    guard = UpdateGuard("test", 3)
    for step in (1, 2, 3):
        experience, _ = trainer.experience(trainer.rollout(trainer.prompt_batch(step)))
        check(experience)
        stats = trainer.update(experience, guard)
    experience, stats = trainer.experience(trainer.rollout(trainer.prompt_batch(4)))
    check(experience)
    assert stats["objective/kl"].item() != 0.0  # the adapters did move the actor
    # every base weight (and the RM's original head) bit-identical after training
    after = trainer.roles.trainable.state_dict()
    assert all(torch.equal(after[k], v) for k, v in bases.items() if "modules_to_save" not in k)


def test_only_adapters_and_the_head_are_in_the_optimiser(rlhf_stack, tmp_path):
    trainer = lora_trainer(rlhf_stack, tmp_path, model_dtype="bfloat16")
    optimised = {id(p) for group in trainer.opt.optimizer.param_groups for p in group["params"]}
    names = {n for n, p in trainer.roles.trainable.named_parameters() if id(p) in optimised}
    assert names and all("lora_" in n or "modules_to_save" in n for n in names)
    assert any("modules_to_save" in n for n in names)  # the critic's head trains
    dtypes = {n: p.dtype for n, p in trainer.roles.trainable.named_parameters()}
    assert {dtypes[n] for n in names} == {torch.float32}  # trained: fp32
    assert dtypes["policy.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16  # bases: bf16


def test_saved_folders_merged_and_adapter_give_the_trained_policy(rlhf_stack, tmp_path):
    import peft

    out = ppo(make_config(rlhf_stack, tmp_path / "ppo", lora=LORA, actor_lr=1e-2, critic_lr=1e-2))
    tokenizer = load_tokenizer(str(out / "actor"))
    merged = load_causal_lm(str(out / "actor"), tokenizer).eval()
    base = load_causal_lm(rlhf_stack[0], tokenizer)
    adapted = peft.PeftModel.from_pretrained(base, str(out / "actor-adapter")).eval()  # peft alone
    ids = torch.tensor([tokenizer("the movie was great and")["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = response_logprobs(adapted, ids, mask, 2, 1.0)[0]
        got = response_logprobs(merged, ids, mask, 2, 1.0)[0]
        with adapted.disable_adapter():
            sft = response_logprobs(adapted, ids, mask, 2, 1.0)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(sft, expected, atol=1e-4)  # the adapter is not a no-op
    config = json.loads((out / "actor-adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(rlhf_stack[0]).resolve())
    # the critic: a sequence-classification folder, and a PEFT folder that carries the trained head
    critic = load_scalar_model(str(out / "critic"), tokenizer).eval()
    from_adapter = load_scalar_model(str(out / "critic-adapter"), tokenizer).eval()
    _, reward_model = frozen_roles(rlhf_stack)
    with torch.no_grad():
        score = sequence_scores(critic, ids, mask)
        torch.testing.assert_close(sequence_scores(from_adapter, ids, mask), score, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(sequence_scores(reward_model, ids, mask), score, atol=1e-4)
    # model cards: merged folders are transformers', adapters peft's, and each adapter's example loads it
    final = read_run_file(out)["final"]
    for name in ("actor", "critic"):
        check_card(out / name, ["rlhfkit", "ppo"], final)
        check_card(out / f"{name}-adapter", ["rlhfkit", "ppo", "lora"], final, library="peft")
    with torch.no_grad():
        actor = run_example(out / "actor-adapter")["model"].eval()
        torch.testing.assert_close(
            response_logprobs(actor, ids, mask, 2, 1.0)[0], expected, rtol=1e-5, atol=1e-5
        )
        example = run_example(out / "critic-adapter")  # it scores a text of its own
        text = torch.tensor([tokenizer("The movie was great.")["input_ids"]])
        expected_score = sequence_scores(critic, text, torch.ones_like(text))[0]
        torch.testing.assert_close(example["score"], expected_score, rtol=1e-5, atol=1e-5)


def test_an_adapter_folder_is_a_model_folder(rlhf_stack, tmp_path):
    """`sft` with LoRA writes the merged model and OUT/adapter; either starts the next stage."""
    data = write_jsonl(tmp_path / "sft.jsonl", sentiment_rows(64))
    out = tmp_path / "sft"
    args = ["--model", rlhf_stack[0], "--data", data, "--max-steps", "3", "lora.r=4", "optim.lr=1e-2"]
    assert main(["sft", "--out", str(out), *args]) == 0
    assert (out / "model.safetensors").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    tokenizer = load_tokenizer(str(out / "adapter"))
    merged = load_causal_lm(str(out), tokenizer).eval()
    from_adapter = load_causal_lm(str(out / "adapter"), tokenizer).eval()  # base + adapter, merged
    ids = torch.tensor([tokenizer("the pizza was")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(from_adapter(ids).logits, merged(ids).logits, rtol=1e-5, atol=1e-5)
    # ... and as PPO's policy
    rm = tmp_path / "rm"
    pairs = write_jsonl(tmp_path / "pairs.jsonl", great_rows(32))
    rm_args = ["--model", str(out / "adapter"), "--data", pairs, "--max-steps", "2", "lora.r=4"]
    assert main(["rm", "--out", str(rm), *rm_args]) == 0
    assert (rm / "adapter" / "adapter_config.json").is_file()
    stack = (str(out / "adapter"), str(rm / "adapter"), rlhf_stack[2])
    assert main(["ppo", *_ppo_args(stack, tmp_path / "ppo")]) == 0


def _ppo_args(stack, out):
    return ppo_args(stack, out, "--max-steps", "1", "batch_size=4", "mini_batch_size=4", "response_length=4")[
        1:
    ]


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.target_modules=q_proj,nonexistent", "lora.target_modules: 'nonexistent' matches no module"),
        ("lora.r=-1", "lora: r must be >= 0, got -1"),
        ("lora.target_modules=embed_tokens", "'embed_tokens' is the embedding matrix the LM head shares"),
        ("lora.target_modules=input_layernorm", "lora.target_modules: Target module"),
    ],
    ids=["no-match", "negative-r", "tied-embeddings", "not-a-layer"],
)
def test_bad_lora_settings_stop_with_status_2_before_anything_is_written(
    rlhf_stack, tmp_path, capsys, override, message
):
    out = tmp_path / "out"
    args = ["--max-steps", "1", "batch_size=4", "mini_batch_size=4", "lora.r=4", override]

    assert main(ppo_args(rlhf_stack, out, *args)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1  # one line
    assert not out.exists()


def test_an_adapter_whose_base_is_missing_stops_with_status_2(rlhf_stack, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    missing = tmp_path / "gone"
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(missing)}))
    out = tmp_path / "out"
    data = write_jsonl(tmp_path / "sft.jsonl", sentiment_rows(8))
    assert main(["sft", "--model", str(adapter), "--data", data, "--out", str(out)]) == 2
    assert f"the adapter's base model {str(missing)!r} is missing" in capsys.readouterr().err
    assert not out.exists()


def test_overwriting_a_lora_run_without_lora_removes_its_adapter(rlhf_stack, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sentiment_rows(32))
    out = tmp_path / "sft"
    args = ["sft", "--model", rlhf_stack[0], "--data", data, "--out", str(out), "--max-steps", "1"]
    assert main([*args, "lora.r=4"]) == 0 and (out / "adapter").is_dir()
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "adapter").exists() and (out / "model.safetensors").is_file()
