"""SFT and reward-model training throughput (optimiser steps/s) on the tiny model and on SmolLM2-135M.

    .venv/bin/python bench/stage_throughput.py [--models tiny smollm2] [--steps 5] [--batch-size 8]

Each row is a real `rlhfkit.sft` / `rlhfkit.train_reward_model` run on synthetic rows of about 64 tokens.
Steps/s excludes the first step (allocation and warm-up): (N - 1) / (t_N - t_1), from metrics.jsonl.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from rlhfkit.config import OptimConfig, RewardConfig, SFTConfig
from rlhfkit.runtime.metrics import read_metrics

WORDS = [
    "the",
    "a",
    "movie",
    "food",
    "was",
    "great",
    "awful",
    "and",
    "but",
    "really",
    "service",
    "staff",
    "price",
    "quite",
    "very",
    "good",
    "bad",
    "place",
]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_rows(folder: Path, n: int = 64) -> tuple[str, str]:
    rng = random.Random(0)
    sft_rows, pairs = [], []
    for _ in range(n):
        prompt = sentence(rng, 24)
        sft_rows.append({"prompt": prompt, "completion": " " + sentence(rng, 24)})
        pairs.append(
            {"prompt": prompt, "chosen": " " + sentence(rng, 24), "rejected": " " + sentence(rng, 24)}
        )
    import json

    (folder / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows))
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return str(folder / "sft.jsonl"), str(folder / "pairs.jsonl")


def tiny_model(folder: Path) -> str:
    from rlhfkit.models import tiny_llama, train_tokenizer

    tokenizer = train_tokenizer([" ".join(WORDS)] * 20, vocab_size=300)
    tiny_llama(tokenizer, hidden_size=256, num_layers=4, num_heads=4).save_pretrained(folder / "tiny")
    tokenizer.save_pretrained(folder / "tiny")
    return str(folder / "tiny")


def steps_per_second(out: Path) -> float:
    metrics = read_metrics(out / "metrics.jsonl")
    times = [m["step"] / m["steps_per_s"] for m in metrics]  # elapsed seconds at the end of each step
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    from rlhfkit import sft, train_reward_model
    from rlhfkit.models import smollm2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sft_data, pair_data = write_rows(folder)
        print(f"{'model':<10} {'stage':<4} {'dtype':<5} {'batch':>5} {'steps/s':>8} {'s/step':>7}")
        for name in args.models:
            model = tiny_model(folder) if name == "tiny" else str(smollm2())
            for bf16 in (False, True):
                for stage in ("sft", "rm"):
                    out = folder / f"{name}-{stage}-{bf16}"
                    common = dict(
                        model=model,
                        out=str(out),
                        max_steps=args.steps,
                        batch_size=args.batch_size,
                        optim=OptimConfig(lr=1e-5),
                        bf16=bf16,
                        eval_every=0,
                        eval_fraction=0.0,
                    )
                    started = time.perf_counter()
                    if stage == "sft":
                        sft(SFTConfig(data=sft_data, **common))
                    else:
                        train_reward_model(RewardConfig(data=pair_data, **common))
                    sps = steps_per_second(out)
                    dtype = "bf16" if bf16 else "fp32"
                    print(
                        f"{name:<10} {stage:<4} {dtype:<5} {args.batch_size:>5} {sps:>8.2f} {1 / sps:>7.2f}"
                        f"   (whole run {time.perf_counter() - started:.1f} s)",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
