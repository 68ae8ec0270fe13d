"""Non-finite losses: the update is skipped and counted; too many in a row stop the run with a checkpoint."""

import math

import torch

import rlhfkit.algorithms.ppo.trainer as ppo_module
import rlhfkit.algorithms.sft as sft_module
from helpers import ppo_args, sentiment_rows, write_jsonl
from rlhfkit.cli import main
from rlhfkit.runtime.metrics import read_metrics


def poison(monkeypatch, module, name, bad_calls):
    """Make `module.name` return a NaN loss on the given (1-based) calls."""
    real, calls = getattr(module, name), {"n": 0}

    def poisoned(*args, **kwargs):
        loss, *rest = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if bad_calls(calls["n"]) else loss, *rest)

    monkeypatch.setattr(module, name, poisoned)


def sft_args(tiny_dir, tmp_path, out):
    data = write_jsonl(tmp_path / "sft.jsonl", sentiment_rows(64))
    # no held-out split: one completion_nll call per step
    return [
        "sft",
        "--model",
        tiny_dir,
        "--data",
        data,
        "--out",
        str(out),
        "--max-steps",
        "6",
        "batch_size=16",
        "eval_fraction=0",
    ]


def test_a_nan_loss_is_skipped_and_counted(tiny_dir, tmp_path, monkeypatch, capsys):
    clean, poisoned = tmp_path / "clean", tmp_path / "poisoned"
    assert main(sft_args(tiny_dir, tmp_path, clean)) == 0
    poison(monkeypatch, sft_module, "completion_nll", lambda n: n == 3)
    assert main(sft_args(tiny_dir, tmp_path, poisoned)) == 0
    assert "step 3: non-finite loss or gradient norm; update skipped" in capsys.readouterr().err
    metrics = read_metrics(poisoned / "metrics.jsonl")
    assert [m["bad_steps"] for m in metrics] == [0, 0, 1, 1, 1, 1]
    assert metrics[2]["loss"] == "nan"
    assert all(math.isfinite(m["loss"]) for m in metrics if m["step"] != 3)
    # steps 1-2 identical to the clean run; after the skipped update the runs differ
    reference = read_metrics(clean / "metrics.jsonl")
    assert [m["loss"] for m in metrics[:2]] == [m["loss"] for m in reference[:2]]
    assert metrics[3]["loss"] != reference[3]["loss"]


def test_repeated_nans_stop_the_run_with_a_checkpoint(tiny_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "diverged"
    poison(monkeypatch, sft_module, "completion_nll", lambda n: n >= 3)
    assert main(sft_args(tiny_dir, tmp_path, out)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "3 non-finite updates in a row at step 5" in err and "step-00000005" in err
    assert (out / "checkpoints" / "step-00000005" / "COMPLETE").is_file()
    assert not (out / "rlhfkit.json").exists()
    state = torch.load(out / "checkpoints" / "step-00000005" / "state.pt", weights_only=False)
    assert all(torch.isfinite(t).all() for t in state["model"].values())  # the last good weights


def test_ppo_skips_a_nan_minibatch_and_stops_after_several(rlhf_stack, tmp_path, monkeypatch, capsys):
    def args(out):
        return ppo_args(
            rlhf_stack,
            out,
            "batch_size=8",
            "mini_batch_size=4",
            "ppo_epochs=1",
            "response_length=8",
            "--max-steps",
            "3",
        )

    # 2 minibatch steps per iteration, 1 micro-batch each: call 3 is iteration 2's first step
    poison(monkeypatch, ppo_module, "micro_batch_loss", lambda n: n == 3)
    assert main(args(tmp_path / "one")) == 0
    metrics = read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert [m["bad_steps"] for m in metrics] == [0, 1, 1]
    assert all(math.isfinite(m["loss/policy"]) for m in metrics)
    monkeypatch.undo()
    poison(monkeypatch, ppo_module, "micro_batch_loss", lambda n: n >= 2)
    assert main(args(tmp_path / "many")) == 1
    assert "3 non-finite updates in a row in iteration 2" in capsys.readouterr().err
    assert (tmp_path / "many" / "checkpoints" / "step-00000002" / "COMPLETE").is_file()
