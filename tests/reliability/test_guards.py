"""Non-finite numbers: an update whose loss or gradient norm is not finite is skipped and counted; too many in
a row stop the run with a checkpoint of the last good state. Through the commands, with models that really
produce NaNs, and through the run loop with a trainer that reports them on chosen steps."""

import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from helpers import ppo_args, sentiment_rows, write_jsonl
from rlhfkit.cli import main
from rlhfkit.config import SFTConfig
from rlhfkit.runtime.checkpoint import load_checkpoint, save_checkpoint
from rlhfkit.runtime.loop import UpdateGuard, guarded_update, run_loop
from rlhfkit.runtime.metrics import read_metrics


def poisoned_copy(folder: str, target: Path, key_part: str) -> str:
    """A copy of a model folder with the first weight whose name contains `key_part` set to NaN."""
    shutil.copytree(folder, target)
    weights = load_file(target / "model.safetensors")
    key = next(k for k in weights if key_part in k)
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return str(target)


def test_sft_on_a_nan_model_stops_after_max_bad_steps_with_a_checkpoint(tiny_dir, tmp_path, capsys):
    model = poisoned_copy(tiny_dir, tmp_path / "nan-model", "norm")
    data = write_jsonl(tmp_path / "sft.jsonl", sentiment_rows(64))
    out = tmp_path / "diverged"
    args = ["sft", "--model", model, "--data", data, "--out", str(out), "--max-steps", "6", "batch_size=16"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "non-finite loss or gradient norm; update skipped (1 in a row)" in err
    assert "3 non-finite updates in a row at step 3" in err.strip().splitlines()[-1]
    assert [m["bad_steps"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert (out / "checkpoints" / "step-00000003" / "COMPLETE").is_file()
    assert not (out / "rlhfkit.json").exists()
    # nothing was stepped: the checkpointed weights are the loaded ones, bit for bit
    state = load_checkpoint(out / "checkpoints" / "step-00000003")
    loaded = load_file(Path(model) / "model.safetensors")
    for key, tensor in loaded.items():
        torch.testing.assert_close(state["model"][key], tensor, rtol=0, atol=0, equal_nan=True)


def test_ppo_with_a_nan_reward_model_stops_with_a_checkpoint(rlhf_stack, tmp_path, capsys):
    sft_dir, rm_dir, prompts = rlhf_stack
    nan_rm = poisoned_copy(rm_dir, tmp_path / "nan-rm", "score")
    out = tmp_path / "ppo"
    args = ppo_args((sft_dir, nan_rm, prompts), out, "batch_size=8", "mini_batch_size=4", "ppo_epochs=2",
                    "response_length=6", "--max-steps", "3")  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "3 non-finite updates in a row at iteration 1" in err
    assert (out / "checkpoints" / "step-00000001" / "COMPLETE").is_file()
    [record] = read_metrics(out / "metrics.jsonl")
    assert record["bad_steps"] == 3
    # the actor never moved: its checkpointed weights equal the SFT model's
    state = load_checkpoint(out / "checkpoints" / "step-00000001")
    sft = load_file(Path(sft_dir) / "model.safetensors")
    assert all(
        torch.equal(state["model"][f"policy.{k}"], v)
        for k, v in sft.items()
        if f"policy.{k}" in state["model"]
    )


class CountingTrainer:
    """A run-loop trainer whose step `bad` reports a NaN loss; `updates` counts the applied ones."""

    def __init__(self, bad):
        self.bad, self.updates = bad, 0

    def step(self, step, guard):
        loss = float("nan") if step in self.bad else 1.0 / step
        if guard.allows(loss):
            self.updates += 1
        return {"loss": loss}

    def evaluate(self, step):
        return None

    def state(self):
        return {"updates": self.updates}

    def restore(self, state):
        self.updates = state["updates"]

    def postfix(self, record):
        return {}


def loop_config(tmp_path):
    return SFTConfig(model="m", data="d", out=str(tmp_path), eval_every=0)


def test_the_loop_skips_counts_and_carries_on(tmp_path):
    trainer = CountingTrainer(bad={3})
    record = run_loop(trainer, tmp_path, loop_config(tmp_path), steps=6, name="t")
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert [m["bad_steps"] for m in metrics] == [0, 0, 1, 1, 1, 1]
    assert metrics[2]["loss"] == "nan" and all(math.isfinite(m["loss"]) for m in metrics if m["step"] != 3)
    assert trainer.updates == 5 and record["step"] == 6


def test_the_loop_stops_after_max_bad_steps_in_a_row(tmp_path):
    trainer = CountingTrainer(bad={2, 3, 4, 5})
    try:
        run_loop(trainer, tmp_path, loop_config(tmp_path), steps=6, name="t")
        raise AssertionError("no Diverged")
    except Exception as exc:  # Diverged
        assert "3 non-finite updates in a row at step 4" in str(exc)
    assert load_checkpoint(tmp_path / "checkpoints" / "step-00000004")["bad_steps"] == 3


def test_guarded_update_leaves_the_weights_alone_on_a_nan():
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    before = [p.detach().clone() for p in layer.parameters()]

    class Plain:
        clip_grad_norm_ = staticmethod(torch.nn.utils.clip_grad_norm_)

    guard = UpdateGuard("t", 3)
    layer(torch.ones(1, 2)).sum().mul(float("nan")).backward()
    _, applied = guarded_update(optimizer, scheduler, Plain, [layer.parameters()], 1.0, [float("nan")], guard)
    assert not applied and guard.total == 1
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))
    assert all(p.grad is None for p in layer.parameters())
    layer(torch.ones(1, 2)).sum().backward()
    _, applied = guarded_update(optimizer, scheduler, Plain, [layer.parameters()], 1.0, [1.0], guard)
    assert applied and guard.in_a_row == 0 and guard.total == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))


class SamplingTrainer(CountingTrainer):
    """Evaluates with one sample per evaluation."""

    def evaluate(self, step):
        return {"eval/x": float(step)}, [{"text": f"sample {step}"}]


def test_a_fresh_run_does_not_keep_an_old_samples_file(tmp_path):
    (tmp_path / "samples.jsonl").write_text('{"step": 1, "text": "an old run"}\n')
    run_loop(CountingTrainer(bad=set()), tmp_path, loop_config(tmp_path), steps=2, name="t")
    assert not (tmp_path / "samples.jsonl").exists()  # this trainer writes no samples
    run_loop(SamplingTrainer(bad=set()), tmp_path, loop_config(tmp_path), steps=2, name="t")
    assert [s["text"] for s in read_metrics(tmp_path / "samples.jsonl")] == ["sample 2"]


def test_a_resume_continues_the_run_of_bad_steps(tmp_path):
    """Three bad steps stop a run with a checkpoint; after a resume the next bad step is the fourth in a row,
    not the first."""
    config = SFTConfig(model="m", data="d", out=str(tmp_path), eval_every=0)
    trainer = CountingTrainer(bad={1, 2, 3})
    try:
        run_loop(trainer, tmp_path, config, steps=3, name="t")
        raise AssertionError("no Diverged")
    except Exception as exc:  # Diverged
        assert "3 non-finite updates in a row at step 3" in str(exc)
    resumed = CountingTrainer(bad={4})
    last = tmp_path / "checkpoints" / "step-00000003"
    try:
        run_loop(resumed, tmp_path, config, steps=4, name="t", resume_from=last)
        raise AssertionError("no Diverged")
    except Exception as exc:  # 4 bad in a row counting the 3 before the checkpoint
        assert "4 non-finite updates in a row at step 4" in str(exc)


def test_a_resume_with_no_step_left_returns_the_last_record(tmp_path):
    """A stop in the last step leaves a checkpoint of it; resuming runs nothing and returns its record."""
    config = SFTConfig(model="m", data="d", out=str(tmp_path), eval_every=0)
    first = run_loop(CountingTrainer(bad=set()), tmp_path, config, steps=2, name="t")
    save_checkpoint(tmp_path, 2, {"updates": 2, "bad_steps": 0, "bad_in_a_row": 0}, keep=2)
    trainer = CountingTrainer(bad=set())
    again = run_loop(
        trainer, tmp_path, config, steps=2, name="t", resume_from=tmp_path / "checkpoints" / "step-00000002"
    )
    assert again == first and trainer.updates == 2
