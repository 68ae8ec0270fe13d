"""Kill a run with SIGKILL (or stop it with SIGTERM) at a chosen step, resume it, and get exactly the
metrics of a run that was never stopped."""

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import metric_records, ppo_args, preference_rows, sentiment_rows, write_jsonl
from rlhfkit.cli import main

# Runs the CLI in a child process that sends itself `signal` right after the metrics line of step `at`.
CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})  # the scripted environments (envs.py)
    import rlhfkit.runtime.metrics as sink
    write = sink.MetricsLog.write
    def write_then_signal(self, record):
        write(self, record)
        if record.get("step") == {at}:
            os.kill(os.getpid(), {signum})
    sink.MetricsLog.write = write_then_signal
    from rlhfkit.cli import main
    sys.exit(main({args!r}))
""")


def run_child(args, at, signum):
    code = CHILD.format(at=at, signum=int(signum), args=args, tests=str(Path(__file__).parents[1]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume-data")
    return {
        "sft": write_jsonl(folder / "sft.jsonl", sentiment_rows(160)),
        "rm": write_jsonl(folder / "pairs.jsonl", preference_rows(160)),
        "dpo": write_jsonl(folder / "dpo-pairs.jsonl", preference_rows(160)),
    }


def command(kind, rlhf_stack, tiny_dir, data, out):
    """The run of `kind`: sft, rm, ppo, or one of them with LoRA (`ppo-lora`)."""
    kind, _, lora = kind.partition("-")
    return [*full_command(kind, rlhf_stack, tiny_dir, data, out), *(["lora.r=4"] if lora else [])]


def full_command(kind, rlhf_stack, tiny_dir, data, out):
    sft_dir = rlhf_stack[0]
    if kind == "online":  # online DPO: sampled, scored and paired at every step
        sft, rm, prompts = rlhf_stack
        return ["dpo", "--model", sft, "--prompts", prompts, "--reward-model", rm, "--out", str(out),
                "--max-steps", "8", "batch_size=8", "samples_per_prompt=4", "response_length=8",
                "save_every=3", "eval_every=2", "optim.lr=1e-3"]  # fmt: skip
    if kind == "turns":  # multi-turn episodes with a scripted environment and the RM
        return [*full_command("ppo", rlhf_stack, tiny_dir, data, out), "--environment", "envs:Scripted",
                "max_turns=3", "response_length=5"]  # fmt: skip
    if kind == "ppo":
        return ppo_args(
            rlhf_stack,
            out,
            "--max-steps",
            "8",
            "batch_size=8",
            "mini_batch_size=4",
            "response_length=8",
            "save_every=3",
            "eval_every=2",
            "kl_target=3",
        )
    return [
        kind,
        "--model",
        tiny_dir if kind == "sft" else sft_dir,
        "--data",
        data[kind],
        "--out",
        str(out),
        "--max-steps",
        "12",
        "batch_size=16",
        "save_every=4",
        "eval_every=5",
        *(["optim.lr=1e-3"] if kind == "dpo" else []),
    ]


KINDS = ["sft", "rm", "ppo", "dpo", "online", "turns", "rm-lora", "ppo-lora", "dpo-lora", "online-lora"]


@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_then_resume_gives_the_uninterrupted_metrics(
    kind, rlhf_stack, tiny_dir, data, tmp_path, monkeypatch
):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(command(kind, rlhf_stack, tiny_dir, data, straight)) == 0
    ppo = kind.startswith(("ppo", "online", "turns"))
    kill_at = 5 if ppo else 6  # after checkpoint 3 (ppo) / 4: the steps after it are lost and redone
    child = run_child(command(kind, rlhf_stack, tiny_dir, data, killed), kill_at, signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert len(metric_records(killed / "metrics.jsonl")) == kill_at
    if kind.endswith("lora"):  # the checkpoint holds the trained tensors alone: adapters and the head
        (checkpoint,) = (killed / "checkpoints").glob("step-*")
        names = torch.load(checkpoint / "state.pt", weights_only=True)["model"]
        assert names and all("lora_" in name or "modules_to_save" in name for name in names)
    # a run with checkpoints is not restarted by accident
    assert main(command(kind, rlhf_stack, tiny_dir, data, killed)) == 2
    if kind.startswith("dpo"):  # the reference's log-probs are read back, not computed again
        import rlhfkit.algorithms.dpo.offline as offline

        assert (killed / "checkpoints" / offline.CACHE).is_file()
        monkeypatch.setattr(offline, "reference_sums", lambda *a, **k: pytest.fail("recomputed"))
    assert main([*command(kind, rlhf_stack, tiny_dir, data, killed), "--resume"]) == 0
    assert metric_records(killed / "metrics.jsonl") == metric_records(straight / "metrics.jsonl")
    if ppo:
        assert (killed / "samples.jsonl").read_text() == (straight / "samples.jsonl").read_text()
    assert not (killed / "checkpoints").exists()  # a finished run keeps its models, not its checkpoints


def test_sigterm_writes_a_checkpoint_and_exits_143(rlhf_stack, tiny_dir, data, tmp_path):
    out = tmp_path / "stopped"
    args = command("sft", rlhf_stack, tiny_dir, data, out)
    child = run_child(args, at=7, signum=signal.SIGTERM)
    assert child.returncode == 143
    message = child.stderr.strip().splitlines()[-1]
    assert "stopped by SIGTERM" in message and "step-00000007" in message and "--resume" in message
    assert (out / "checkpoints" / "step-00000007" / "COMPLETE").is_file()
    assert main([*args, "--resume"]) == 0
    assert [r["step"] for r in metric_records(out / "metrics.jsonl")] == list(range(1, 13))


def test_a_checkpoint_truncated_mid_write_is_ignored(rlhf_stack, tiny_dir, data, tmp_path, capsys):
    straight, out = tmp_path / "straight", tmp_path / "crashed"
    args = command("sft", rlhf_stack, tiny_dir, data, out)
    assert main(command("sft", rlhf_stack, tiny_dir, data, straight)) == 0
    assert run_child(args, at=10, signum=signal.SIGKILL).returncode == -signal.SIGKILL
    # the crash happened while step 10's checkpoint was being written: half a file, no COMPLETE marker
    broken = out / "checkpoints" / "step-00000010"
    broken.mkdir()
    (broken / "state.pt").write_bytes(
        (out / "checkpoints" / "step-00000008" / "state.pt").read_bytes()[:1000]
    )
    assert main([*args, "--resume"]) == 0
    assert metric_records(out / "metrics.jsonl") == metric_records(straight / "metrics.jsonl")


def test_resume_needs_a_checkpoint(rlhf_stack, tiny_dir, data, tmp_path, capsys):
    assert main([*command("sft", rlhf_stack, tiny_dir, data, tmp_path / "none"), "--resume"]) == 2
    assert "has no complete checkpoint" in capsys.readouterr().err


def test_ppo_stopped_in_its_last_iteration_resumes_to_a_finished_run(rlhf_stack, tiny_dir, data, tmp_path):
    out = tmp_path / "last"
    args = command("ppo", rlhf_stack, tiny_dir, data, out)
    assert run_child(args, at=8, signum=signal.SIGTERM).returncode == 143
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "rlhfkit.json").read_text())["finished"]
    assert (out / "actor" / "config.json").is_file()


def test_a_half_written_line_is_dropped_on_resume(tmp_path):
    from rlhfkit.runtime.checkpoint import truncate_jsonl

    path = tmp_path / "samples.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "pro')
    truncate_jsonl(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


@pytest.mark.parametrize("kind", ["sft", "ppo"])
def test_a_checkpoint_resumes_only_with_its_own_lora_settings(
    kind, rlhf_stack, tiny_dir, data, tmp_path, capsys
):
    out = tmp_path / "killed"
    child = run_child(command(f"{kind}-lora", rlhf_stack, tiny_dir, data, out), 5, signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL, child.stderr
    before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    for other in ("lora.r=8", "lora.r=0"):
        assert main([*command(kind, rlhf_stack, tiny_dir, data, out), other, "--resume"]) == 2
        err = capsys.readouterr().err
        assert "the checkpoint was written with lora_r=4 (now " in err and err.count("\n") == 1
    assert (out / "metrics.jsonl").read_text() == before  # nothing touched
    assert main([*command(f"{kind}-lora", rlhf_stack, tiny_dir, data, out), "--resume"]) == 0
