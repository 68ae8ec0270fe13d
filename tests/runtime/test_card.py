"""Model cards: metadata the Hub reads (through `huggingface_hub`'s own parser), hub datasets told from local
paths, the base model traced through local folders, and a loading example that runs."""

import json

import pytest

from cards import card_numbers, read_card, run_example
from rlhfkit.config import PPOConfig, RewardConfig, SFTConfig
from rlhfkit.runtime.card import (
    Card,
    hub_datasets,
    method_tag,
    render_card,
    run_card,
    traced_base_model,
    write_card,
)

HUB_MODEL = "HuggingFaceTB/SmolLM2-135M"


def card(**fields) -> Card:
    base = dict(
        command="sft",
        method="sft",
        kind="causal-lm",
        start=HUB_MODEL,
        base_model=HUB_MODEL,
        sources=("imdb",),
        datasets=("imdb",),
        numbers={"loss": 0.25},
        config="model: x\n",
    )
    return Card(**{**base, **fields})


def test_rm_card_metadata_parses_with_huggingface_hub(tmp_path):
    local = tmp_path / "held_out.jsonl"
    local.write_text("{}\n")
    config = RewardConfig(
        model=HUB_MODEL, data="Anthropic/hh-rlhf:harmless-base@train", eval_data=str(local), out=str(tmp_path)
    )
    numbers = {"loss": 0.123456789, "eval/accuracy": 0.75, "note": "text", "flag": True}
    write_card(tmp_path, run_card("rm", config, numbers, HUB_MODEL, "scalar"))
    metadata, body = read_card(tmp_path)
    assert metadata == {
        "base_model": HUB_MODEL,  # a hub name is its own base
        "base_model_relation": "finetune",
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["rlhfkit", "reward-model"],
        "datasets": ["Anthropic/hh-rlhf"],  # the hub name less config and split; the local file left out
    }
    # only numbers are tabled, to 6 significant digits: 0.123456789 -> 0.123457
    assert card_numbers(body) == {"loss": 0.123457, "eval/accuracy": 0.75}
    assert "AutoModelForSequenceClassification" in body and f"`{local}`" in body  # the data, as given
    assert "rlhfkit rm --config config.yaml" in body and f"eval_data: {local}" in body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "held_out.jsonl"]  # no staging file


def test_an_adapter_card_is_peft_and_a_card_without_a_base_leaves_the_key_out(tmp_path):
    write_card(tmp_path, card(adapter=True))
    metadata, body = read_card(tmp_path)
    assert metadata["library_name"] == "peft" and metadata["base_model_relation"] == "adapter"
    assert metadata["tags"] == ["rlhfkit", "sft", "lora"] and "AutoPeftModelForCausalLM" in body
    write_card(tmp_path, card(base_model=None, datasets=(), numbers={}))  # replaces the card
    metadata, body = read_card(tmp_path)
    assert "base_model" not in metadata and "base_model_relation" not in metadata
    assert "datasets" not in metadata and "## Results" not in body


@pytest.mark.parametrize(
    "command, overrides, tag",
    [
        ("sft", {}, "sft"),
        ("rm", {}, "reward-model"),
        ("dpo", {}, "dpo"),
        ("ppo", {}, "ppo"),  # GAE: PPO proper
        ("ppo", {"advantage_estimator": "grpo", "samples_per_prompt": 2}, "grpo"),
        ("ppo", {"advantage_estimator": "rloo", "samples_per_prompt": 2}, "rloo"),
        ("ppo", {"advantage_estimator": "reinforce_pp"}, "reinforce_pp"),
    ],
)
def test_the_method_tag(command, overrides, tag):
    config = PPOConfig(policy="p", prompts="q", out="o", reward_model="r", **overrides)
    assert method_tag(command, config if command == "ppo" else None) == tag


def test_hub_datasets_keep_hub_names_and_leave_out_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "saved").mkdir()  # a local folder (save_to_disk) whose name looks like a hub name
    sources = [
        "imdb",  # a hub name without an owner
        "HuggingFaceH4/ultrafeedback_binarized@train_prefs",
        "Anthropic/hh-rlhf:harmless-base@test",
        "Anthropic/hh-rlhf@train",  # the same dataset again: listed once
        "saved",
        "saved@test",  # a split of the local folder
        "missing.jsonl",  # a data file that does not exist is still a local path
        "./data/prompts",
        str(tmp_path / "nowhere"),
    ]
    assert hub_datasets(sources) == ("imdb", "HuggingFaceH4/ultrafeedback_binarized", "Anthropic/hh-rlhf")


def test_the_base_model_is_traced_through_local_folders(tmp_path):
    assert traced_base_model(HUB_MODEL) == HUB_MODEL
    sft = tmp_path / "sft"  # an sft folder trained from the hub model carries its card
    sft.mkdir()
    write_card(sft, card())
    assert traced_base_model(str(sft)) == HUB_MODEL
    adapter = tmp_path / "adapter"  # an adapter folder (no card) on that local folder
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(sft)}))
    assert traced_base_model(str(adapter)) == HUB_MODEL
    scratch = tmp_path / "scratch"  # a folder with no card, made by another tool: nothing to name
    scratch.mkdir()
    assert traced_base_model(str(scratch)) is None
    # a hub model downloaded into a folder: its card names the model's own base, not the model
    (scratch / "README.md").write_text(f"---\nbase_model: {HUB_MODEL}\n---\n# an instruct model\n")
    assert traced_base_model(str(scratch)) is None
    snapshot = tmp_path / "hub" / "models--Org--Name" / "snapshots" / "abc123"  # the hub's download cache
    snapshot.mkdir(parents=True)
    assert traced_base_model(str(snapshot)) == "Org/Name"


def test_an_rm_from_a_local_sft_folder_names_the_hub_base(tmp_path):
    sft = tmp_path / "sft"
    sft.mkdir()
    write_card(sft, card())
    config = RewardConfig(model=str(sft), data="pairs.jsonl", out=str(tmp_path / "rm"))
    rm = run_card("rm", config, {}, str(sft), "scalar")
    assert rm.base_model == HUB_MODEL and rm.datasets == ()
    assert f"`{sft}` (from `{HUB_MODEL}`)" in render_card(rm, "rm")


def test_the_loading_example_runs(tiny_dir, tmp_path):
    """The card's Python example, run as written: it loads the model and generates."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    config = SFTConfig(model=tiny_dir, data="d.jsonl", out=str(folder))
    write_card(folder, run_card("sft", config, {"loss": 1.0}, tiny_dir, "causal-lm"))
    names = run_example(folder)
    assert names["model_id"] == "model" and type(names["model"]).__name__ == "LlamaForCausalLM"
