"""Two gloo processes on CPU (`torchrun --nproc_per_node 2 -m rlhfkit.cli ...`) give the metrics of one
process with the same global batch; only the main process writes; a run stopped on two processes resumes on
two."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import metric_records, ppo_args, sentiment_rows, write_jsonl

PORTS = iter(range(29541, 29600))


# CPU processes (gloo) even where a GPU is visible: two processes cannot share one GPU under NCCL
CPU = dict(os.environ, CUDA_VISIBLE_DEVICES="")


def torchrun(args: list[str], processes: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_port", str(next(PORTS)), "-m", "rlhfkit.cli", *args,
    ]  # fmt: skip


CONFIGS = Path(__file__).parents[2] / "configs" / "accelerate"


def fsdp(args: list[str], config: Path = CONFIGS / "fsdp.yaml") -> list[str]:
    """`rlhfkit ARGS` under the shipped FSDP config (or `config`), on two CPU processes (fsdp_on_cpu.py)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
        "--main_process_port", str(next(PORTS)), str(Path(__file__).with_name("fsdp_on_cpu.py")), *args,
    ]  # fmt: skip


def launch(args: list[str], processes: int = 2, engine=torchrun) -> subprocess.CompletedProcess:
    """`rlhfkit ARGS` on CPU, as one plain process or two processes started by `engine`."""
    command = engine(args) if processes > 1 else [sys.executable, "-m", "rlhfkit.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=CPU)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def records(folder, name="metrics.jsonl"):
    return metric_records(folder / name)


def assert_close_records(one, two, rel, keys=None):
    assert len(one) == len(two)
    for a, b in zip(one, two, strict=True):
        assert set(a) == set(b)
        for key in keys or a:
            assert b[key] == pytest.approx(a[key], rel=rel, abs=rel), (a["step"], key, a[key], b[key])


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("mp") / "sft.jsonl", sentiment_rows(96))


def assert_same_weights(one: Path, two: Path) -> None:
    """The two model folders hold the same tensors under the same names (tied copies left out alike)."""
    from safetensors.torch import load_file

    first, second = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert sorted(first) == sorted(second)
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=1e-4, atol=1e-5)  # Adam steps: ~1e-3


@pytest.mark.parametrize("engine", [torchrun, fsdp], ids=["ddp", "fsdp"])
def test_sft_on_two_processes_matches_one(tiny_dir, sft_data, tmp_path, engine):
    args = ["--model", tiny_dir, "--data", sft_data, "max_steps=4", "batch_size=16", "eval_every=2",
            "grad_accum=2", "optim.lr=3e-3"]  # fmt: skip
    launch(["sft", "--out", str(tmp_path / "one"), *args], processes=1)
    launch(["sft", "--out", str(tmp_path / "two"), *args], engine=engine)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert_close_records(one, two, rel=1e-5, keys=["loss", "grad_norm", "tokens"])
    assert [r["eval/loss"] for r in two if "eval/loss" in r] == pytest.approx(
        [r["eval/loss"] for r in one if "eval/loss" in r], rel=1e-5
    )
    assert (tmp_path / "two" / "config.json").is_file() and (tmp_path / "two" / "rlhfkit.json").is_file()
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_a_last_batch_shorter_than_the_processes_does_not_hang(tiny_dir, tmp_path):
    """33 examples in batches of 16: the epoch ends with a batch of one, which one process alone holds; the
    other runs a stand-in pass that counts for nothing (DDP needs as many backward passes everywhere)."""
    data = write_jsonl(tmp_path / "sft.jsonl", sentiment_rows(33, seed=3))
    args = ["--model", tiny_dir, "--data", data, "epochs=1", "batch_size=16", "grad_accum=2",
            "eval_fraction=0", "optim.lr=3e-3"]  # fmt: skip
    launch(["sft", "--out", str(tmp_path / "one"), *args], processes=1)
    launch(["sft", "--out", str(tmp_path / "two"), *args])
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["tokens"] for r in one][-1] < [r["tokens"] for r in one][0]  # the short last batch
    assert_close_records(one, two, rel=1e-5, keys=["loss", "grad_norm", "tokens"])


@pytest.mark.parametrize("engine", [torchrun, fsdp], ids=["ddp", "fsdp"])
def test_rm_on_two_processes_matches_one(rlhf_stack, tmp_path, engine):
    from helpers import great_rows

    data = write_jsonl(tmp_path / "pairs.jsonl", great_rows(96))
    args = ["--model", rlhf_stack[0], "--data", data, "max_steps=4", "batch_size=16", "eval_every=2",
            "optim.lr=1e-3"]  # fmt: skip
    launch(["rm", "--out", str(tmp_path / "one"), *args], processes=1)
    launch(["rm", "--out", str(tmp_path / "two"), *args], engine=engine)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert_close_records(one, two, rel=1e-5, keys=["loss", "accuracy", "margin", "grad_norm"])
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    stats = [
        json.loads((tmp_path / name / "rlhfkit.json").read_text())["reward_stats"] for name in ("one", "two")
    ]
    assert stats[1]["mean"] == pytest.approx(stats[0]["mean"], rel=1e-5)


PPO = ["batch_size=8", "mini_batch_size=4", "micro_batch_size=2", "ppo_epochs=2", "response_length=8",
       "eval_every=2", "--max-steps", "3"]  # fmt: skip


@pytest.mark.parametrize("engine", [torchrun, fsdp], ids=["ddp", "fsdp"])
def test_ppo_on_two_processes_matches_one(rlhf_stack, sft_data, tmp_path, engine):
    """With the ptx term on too: its batch is drawn for the run and its token mean taken over both. Under
    FSDP each process holds half of actor and critic; generation and evaluation gather them whole."""
    args = [f"ptx_data={sft_data}", "ptx_coef=0.5", *PPO]
    launch(ppo_args(rlhf_stack, tmp_path / "one", *args), processes=1)
    launch(ppo_args(rlhf_stack, tmp_path / "two", *args), engine=engine)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert_close_records(one[:1], two[:1], rel=1e-5)  # the first iteration: equal within 1e-5
    assert_close_records(one[1:], two[1:], rel=1e-3)  # later ones: float-summation noise only
    # the main process alone wrote: one line per iteration, one set of samples per evaluation
    samples = [[s["step"] for s in records(tmp_path / name, "samples.jsonl")] for name in ("one", "two")]
    assert samples[0] == samples[1]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    for role in ("actor", "critic"):
        assert_same_weights(tmp_path / "one" / role, tmp_path / "two" / role)
    run_files = [json.loads((tmp_path / name / "rlhfkit.json").read_text()) for name in ("one", "two")]
    launches = [run_file["launch"] for run_file in run_files]
    assert launches == [
        {"processes": 1, "engine": "single process"},
        {"processes": 2, "engine": "fsdp" if engine is fsdp else "ddp"},
    ]


def test_ppo_with_lora_on_two_processes_matches_one(rlhf_stack, tmp_path):
    """DDP replicates the two bases and syncs the adapters' and the head's gradients."""
    args = ["lora.r=4", "actor_lr=1e-3", "critic_lr=1e-3", *PPO]
    launch(ppo_args(rlhf_stack, tmp_path / "one", *args), processes=1)
    launch(ppo_args(rlhf_stack, tmp_path / "two", *args))
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert one[0]["objective/kl"] == 0.0 and one[-1]["objective/kl"] != 0.0  # the adapters moved the actor
    assert_close_records(one[:1], two[:1], rel=1e-5)
    assert_close_records(one[1:], two[1:], rel=1e-3)
    for role in ("actor", "critic"):
        assert_same_weights(tmp_path / "one" / role, tmp_path / "two" / role)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="accelerate launch hands its processes the GPUs; two cannot share one"
)
def test_accelerate_launch_gives_the_same_first_iteration(rlhf_stack, tmp_path):
    """`accelerate launch` with the shipped CPU config starts two processes too (`--cpu` would start one)."""
    config = CONFIGS / "ddp-cpu.yaml"
    args = [*PPO[:-2], "--max-steps", "1"]
    launch(ppo_args(rlhf_stack, tmp_path / "one", *args), processes=1)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                "--main_process_port", str(next(PORTS)), "-m", "rlhfkit.cli"]  # fmt: skip
    done = subprocess.run(
        [*launcher, *ppo_args(rlhf_stack, tmp_path / "two", *args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("actor and critic written") == 1  # the main process alone reports
    assert_close_records(records(tmp_path / "one"), records(tmp_path / "two"), rel=1e-5)


def test_a_batch_the_processes_do_not_divide_stops_every_process_with_status_2(rlhf_stack, tmp_path):
    """Each process refuses on its own. torchrun stops the others as soon as one exits; polling every 5 s
    instead of every 0.1 s gives the slower one time to reach its own refusal (else it is stopped first)."""
    out = tmp_path / "out"
    command = torchrun(ppo_args(rlhf_stack, out, "batch_size=6", "mini_batch_size=3"))
    command[3:3] = ["--monitor-interval", "5"]  # after `-m torch.distributed.run`
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode != 0
    assert (
        done.stderr.count("rlhfkit ppo: error: mini_batch_size (3) must be divisible by the 2 processes") == 2
    )
    assert not out.exists()


def test_label_refuses_two_processes(rlhf_stack, tmp_path):
    out = tmp_path / "pairs.jsonl"
    args = [
        "label",
        "--policy",
        rlhf_stack[0],
        "--prompts",
        rlhf_stack[2],
        "--gold",
        "m:f",
        "--out",
        str(out),
    ]
    done = subprocess.run(torchrun(args), capture_output=True, text=True, env=CPU)
    assert done.returncode != 0 and "`label` runs as one process" in done.stderr
    assert not out.exists()


def stop_after_two_iterations(command: list[str], out: Path) -> dict:
    """Run `command` (a two-process launch writing to `out`) and send it SIGTERM once two iterations are
    logged: the launcher (torchrun, accelerate) passes it on to both processes, which checkpoint and stop.
    The one checkpoint's state, the run unfinished (no run file)."""
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=CPU)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2:
            run.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    run.communicate(timeout=300)
    checkpoints = list((out / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1 and not (out / "rlhfkit.json").exists()
    return torch.load(checkpoints[0] / "state.pt", weights_only=True)


@pytest.mark.parametrize("engine", [torchrun, fsdp], ids=["ddp", "fsdp"])
def test_a_two_process_run_stopped_by_sigterm_resumes_to_the_uninterrupted_metrics(
    rlhf_stack, tmp_path, engine
):
    args = [*PPO[:-2], "--max-steps", "5"]
    launch(ppo_args(rlhf_stack, tmp_path / "whole", *args), engine=engine)
    out = tmp_path / "stopped"
    state = stop_after_two_iterations(engine(ppo_args(rlhf_stack, out, *args)), out)
    # whole tensors either way; FSDP's optimiser state is gathered keyed by parameter name, DDP's by index
    from safetensors.torch import load_file

    for name, tensor in load_file(tmp_path / "whole" / "actor" / "model.safetensors").items():
        assert state["model"][f"policy.{name}"].shape == tensor.shape
    keys = {type(k) for k in state["optimizer"]["state"]}
    assert keys == ({str} if engine is fsdp else {int})
    launch(ppo_args(rlhf_stack, out, *args, "--resume"), engine=engine)
    assert records(out) == records(tmp_path / "whole")


@pytest.mark.parametrize(
    "launcher, message",
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed is not supported; shard with FSDP2 instead"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "FSDP version 1 is not supported"),
    ],
    ids=["deepspeed", "fsdp1"],
)
def test_an_engine_rlhfkit_does_not_drive_is_refused_before_anything_is_written(
    tiny_dir, sft_data, tmp_path, launcher, message
):
    """The variables `accelerate launch` sets for a DeepSpeed or FSDP1 config."""
    out = tmp_path / "out"
    args = ["sft", "--model", tiny_dir, "--data", sft_data, "--out", str(out), "max_steps=1"]
    done = subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", *args], capture_output=True, text=True, env={**CPU, **launcher}
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"rlhfkit sft: error: {message}")
    assert not out.exists()


@pytest.mark.parametrize("engine", [torchrun, fsdp], ids=["ddp", "fsdp"])
def test_dpo_on_two_processes_matches_one(rlhf_stack, tmp_path, engine):
    """Each process computes the reference log-probs of every second batch; the sums are shared."""
    from helpers import great_rows

    data = write_jsonl(tmp_path / "pairs.jsonl", great_rows(96))
    args = ["--model", rlhf_stack[0], "--data", data, "max_steps=4", "batch_size=16", "eval_every=2",
            "optim.lr=1e-3", "nll_coef=0.1"]  # fmt: skip
    launch(["dpo", "--out", str(tmp_path / "one"), *args], processes=1)
    launch(["dpo", "--out", str(tmp_path / "two"), *args], engine=engine)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert_close_records(one, two, rel=1e-5, keys=["loss", "rewards/margins", "logps/chosen", "grad_norm"])
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_online_dpo_on_two_processes_matches_one(rlhf_stack, tmp_path):
    """Each process samples and scores its half of the responses; the pairs come from the whole batch."""
    sft, rm, prompts = rlhf_stack
    args = ["--model", sft, "--prompts", prompts, "--reward-model", rm, "max_steps=3", "batch_size=8",
            "samples_per_prompt=4", "response_length=8", "eval_every=2", "optim.lr=1e-3",
            "grad_accum=2"]  # fmt: skip
    launch(["dpo", "--out", str(tmp_path / "one"), *args], processes=1)
    launch(["dpo", "--out", str(tmp_path / "two"), *args])
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert any(r["pairs"] > 0 for r in one)
    assert_close_records(one[:1], two[:1], rel=1e-5)
    assert_close_records(one[1:], two[1:], rel=1e-3)
    assert_same_weights(tmp_path / "one", tmp_path / "two")
