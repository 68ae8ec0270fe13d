"""Seconds per PPO iteration on 1 and on N processes with the same global batch, the scaling efficiency
t1 / (N * tN), and how far the first iteration's metrics of the N-process run are from the 1-process run's.

    .venv/bin/python bench/processes.py [--models tiny smollm2] [--iterations 4] [--processes 2]
                                        [--engine ddp|fsdp] [--lora R] [--model-dtype bfloat16]

`--engine ddp` starts the N processes with torchrun (gloo on CPU, NCCL on GPUs); `--engine fsdp` with
`accelerate launch --config_file configs/accelerate/fsdp.yaml`, where `--processes 1` measures what sharding
costs one GPU. accelerate turns FSDP on for GPU process groups alone: without CUDA the processes start through
tests/cli/fsdp_on_cpu.py, which switches its FSDP path on for gloo (as the tests do). `--lora R` trains LoRA
adapters of rank R on the shared bases (stored in `--model-dtype`). Each run's peak RSS is that of its largest
process (`/usr/bin/time`, where present): what one process holds.

Setting (the SmolLM2 one of the speed issue): 16 episodes x 32 response tokens, 4 PPO epochs, mini-batch 8,
fp32, temperature 1 on an untrained policy (EOS is rare, responses run to full length). The policy is the
base model and the RM a new scalar head on it. The first iteration is left out (warm-up); the rest are
averaged from the `time/*` fields of metrics.jsonl, which every run writes. torchrun gives each process one
thread, so on a 2-core machine 1 process x 2 threads is compared with 2 processes x 1 thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ppo_iteration import build_models, write_prompts  # noqa: E402


def seconds_per_iteration(folder: Path) -> float:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rest = rows[1:] or rows
    return sum(r["time/rollout"] + r["time/score"] + r["time/train"] for r in rest) / len(rest)


FSDP_CONFIG = Path(__file__).parents[1] / "configs" / "accelerate" / "fsdp.yaml"
FSDP_ON_CPU = Path(__file__).parents[1] / "tests" / "cli" / "fsdp_on_cpu.py"
TIME = Path("/usr/bin/time")


def first_iteration_gap(one: Path, many: Path) -> float:
    """Largest relative difference between the first iteration's objective/loss metrics of two runs."""
    first = [json.loads((folder / "metrics.jsonl").read_text().splitlines()[0]) for folder in (one, many)]
    keys = [k for k in first[0] if k.startswith(("objective/", "loss/"))]
    return max(abs(first[1][k] - first[0][k]) / max(abs(first[0][k]), 1e-6) for k in keys)


def run(
    processes: int,
    engine: str,
    policy: str,
    reward: str,
    prompts: Path,
    out: Path,
    iterations: int,
    extra: list[str],
) -> tuple[float, float | None]:
    """Seconds per iteration and the peak RSS in GiB of the run's largest process (None without
    /usr/bin/time)."""
    import torch

    args = [
        "ppo", "--policy", policy, "--reward-model", reward, "--prompts", str(prompts), "--out", str(out),
        "--overwrite", f"max_steps={iterations}", "batch_size=16", "mini_batch_size=8", "ppo_epochs=4",
        "response_length=32", "temperature=1.0", "normalize_reward=false", "eval_every=0", "eval_holdout=4",
        "bf16=false", *extra,
    ]  # fmt: skip
    launcher = [sys.executable, "-m", "rlhfkit.cli"]
    if engine == "fsdp":
        program = ["-m", "rlhfkit.cli"] if torch.cuda.is_available() else [str(FSDP_ON_CPU)]
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
                    "--num_processes", str(processes), "--main_process_port", "29592", *program]  # fmt: skip
    elif processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_port", "29591", "-m", "rlhfkit.cli"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    timed = [str(TIME), "-f", "peak-rss-kib %M"] if TIME.exists() else []
    done = subprocess.run([*timed, *launcher, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    peaks = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("peak-rss-kib ")]
    peak = int(peaks[-1]) / 2**20 if peaks else None
    launched = json.loads((out / "rlhfkit.json").read_text())["launch"]
    expected = engine if engine == "fsdp" or processes > 1 else "single process"
    if launched["engine"] != expected:  # e.g. accelerate ignored the FSDP config
        raise SystemExit(f"{out}: ran as {launched}, not {expected}")
    return seconds_per_iteration(out), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--engine", default="ddp", choices=["ddp", "fsdp"])
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank (0 = full fine-tuning)")
    parser.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    extra = [f"lora.r={args.lora}", f"model_dtype={args.model_dtype}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prompts = write_prompts(folder / "prompts.jsonl", 64)
        many_label = f"{args.processes} x {args.engine}"
        print(
            f"{'model':<9} {'1 process':>10} {many_label:>12} {'speed-up':>9} {'efficiency':>11} "
            f"{'1st-iteration gap':>18} {'peak RSS 1 / N (GiB)':>21}"
        )
        for name in args.models:
            policy, reward = build_models(name, folder)
            one_out, many_out = folder / f"{name}-1", folder / f"{name}-n"
            one, one_peak = run(1, "ddp", policy, reward, prompts, one_out, args.iterations, extra)
            many, many_peak = run(
                args.processes, args.engine, policy, reward, prompts, many_out, args.iterations, extra
            )
            efficiency = one / (args.processes * many)
            gap = first_iteration_gap(one_out, many_out)
            peaks = f"{one_peak:.2f} / {many_peak:.2f}" if one_peak and many_peak else "-"
            print(
                f"{name:<9} {one:>9.2f}s {many:>11.2f}s {one / many:>8.2f}x {efficiency:>10.0%} {gap:>18.1e} "
                f"{peaks:>21}",
                flush=True,
            )


if __name__ == "__main__":
    main()
