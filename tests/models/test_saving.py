"""The one way to save a model folder: staged, then moved into place; old weight files never outlive it."""

import os

import torch
from transformers import AutoModelForCausalLM

from rlhfkit.models import load_causal_lm, load_tokenizer, save_model


def test_a_new_folder_arrives_whole(tiny_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_dir)
    save_model(load_causal_lm(tiny_dir, tokenizer), tokenizer, tmp_path / "a" / "model")
    assert (tmp_path / "a" / "model" / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["model"]  # no staging folder left


def test_an_existing_folder_keeps_its_other_files_and_loses_stale_weights(tiny_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, tokenizer)
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    # an earlier, sharded save: transformers would load the index and its shards instead of the new file
    (out / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (out / "model-00001-of-00002.safetensors").write_text("stale")
    save_model(model, tokenizer, out)
    names = sorted(p.name for p in out.iterdir())
    assert "metrics.jsonl" in names and "model.safetensors" in names
    assert not any(n.startswith("model-0000") or n.endswith(".index.json") for n in names)
    assert not any(n.startswith(".") for n in names)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    expected = model.state_dict()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in loaded.state_dict().items())


def test_the_current_folder_as_target(tiny_dir, tmp_path, monkeypatch):
    tokenizer = load_tokenizer(tiny_dir)
    monkeypatch.chdir(tmp_path)
    save_model(load_causal_lm(tiny_dir, tokenizer), tokenizer, os.curdir)
    assert (tmp_path / "config.json").is_file()
