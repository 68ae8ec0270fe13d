import json
import math

import pytest
import torch

from cards import check_card
from helpers import sentiment_rows, write_jsonl
from rlhfkit.algorithms.sft import sft
from rlhfkit.config import OptimConfig, SFTConfig
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.outputs import read_run_file


@pytest.fixture(scope="module")
def sft_run(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft")
    data = write_jsonl(folder / "sft.jsonl", sentiment_rows(200))
    config = SFTConfig(
        model=tiny_dir,
        data=data,
        out=str(folder / "out"),
        max_steps=40,
        batch_size=16,
        optim=OptimConfig(lr=3e-3),
        eval_every=20,
    )
    return config, sft(config)


def test_sft_loss_drops_well_below_its_start(sft_run):
    _, out = sft_run
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 41))
    # a random model starts near ln(vocab) = ln 400 = 6.0; the fixed corpus is easy to learn
    assert metrics[0]["loss"] > 5.0
    assert metrics[-1]["loss"] < 0.5 * metrics[0]["loss"]
    evals = [m["eval/loss"] for m in metrics if "eval/loss" in m]
    assert len(evals) == 2 and evals[-1] < 0.5 * metrics[0]["loss"]


def test_sft_folder_reloads_with_transformers(sft_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, out = sft_run
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    run = read_run_file(out)
    assert run["finished"] and run["command"] == "sft" and run["config"]["max_steps"] == 40
    assert (out / "config.yaml").is_file()
    # its model card: the started-from folder (no card of its own) names no hub model, local data no dataset
    metadata = check_card(out, ["rlhfkit", "sft"], run["final"])
    assert "base_model" not in metadata and "datasets" not in metadata
    # the trained model prefers a learned completion to a scrambled one
    good = tokenizer("the movie was great and lovely.")["input_ids"]
    with torch.no_grad():
        nll = model(torch.tensor([good]), labels=torch.tensor([good])).loss.item()
        shuffled = model(torch.tensor([good[::-1]]), labels=torch.tensor([good[::-1]])).loss.item()
    assert nll < shuffled


def test_sft_gradient_accumulation_gives_the_same_update(tiny_dir, tmp_path):
    """Token-mean loss over the whole batch: 1 or 4 micro-batches give the same first step.

    adam_eps = 1 makes the first Adam step ~ lr * gradient (instead of ~ lr * sign(gradient), which
    magnifies float noise in near-zero gradients), so the comparison tests the gradients themselves."""
    # completions of 1 to 8 words: micro-batches hold different numbers of tokens, so a per-micro-batch
    # mean would weight tokens differently from the batch's token mean
    rows = [{"prompt": "the movie was", "completion": " great and" * k} for k in range(1, 9)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    weights = []
    for accum in (1, 4):
        config = SFTConfig(
            model=tiny_dir,
            data=data,
            out=str(tmp_path / f"a{accum}"),
            max_steps=1,
            batch_size=8,
            grad_accum=accum,
            optim=OptimConfig(lr=1.0, warmup_ratio=0.0, adam_eps=1.0),
        )
        out = sft(config)
        from safetensors.torch import load_file

        weights.append(load_file(out / "model.safetensors"))
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], rtol=1e-5, atol=1e-6)


def test_finished_run_is_refused_without_overwrite(sft_run, tiny_dir):
    from rlhfkit.errors import UsageError

    config, out = sft_run
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(UsageError, match="holds a finished run; pass --overwrite"):
        sft(config)
    assert (out / "metrics.jsonl").read_text() == before
    json.loads((out / "rlhfkit.json").read_text())  # still whole


def test_sft_bf16_autocast_runs_and_learns(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sentiment_rows(64))
    out = sft(
        SFTConfig(
            model=tiny_dir,
            data=data,
            out=str(tmp_path / "bf16"),
            max_steps=10,
            batch_size=16,
            optim=OptimConfig(lr=3e-3),
            bf16=True,
        )
    )
    losses = [m["loss"] for m in read_metrics(out / "metrics.jsonl")]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
