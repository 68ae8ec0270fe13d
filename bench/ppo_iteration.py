"""Seconds per PPO iteration and its phase split (rollout / score / train) on the tiny model and SmolLM2-135M.

    .venv/bin/python bench/ppo_iteration.py [--models tiny smollm2] [--iterations 3] [--bf16]

Setting: batch 16 episodes, response 32 tokens (EOS disabled so every response is full length: the worst
case), 4 PPO epochs, mini-batch 8. The policy is the untrained model and the RM/critic a new scalar head on
the same backbone, so the numbers measure the machinery, not learning. The first iteration is reported
apart (allocation and warm-up); the others are averaged.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

WORDS = [
    "the",
    "movie",
    "food",
    "service",
    "staff",
    "place",
    "price",
    "was",
    "is",
    "really",
    "quite",
    "very",
    "and",
    "but",
]


def write_prompts(path: Path, count: int, seed: int = 0) -> Path:
    """`count` prompts of 12 random task words, one JSONL row each (every benchmark's prompt set)."""
    rng = random.Random(seed)
    rows = [json.dumps({"prompt": " ".join(rng.choice(WORDS) for _ in range(12))}) for _ in range(count)]
    path.write_text("\n".join(rows) + "\n")
    return path


def build_models(name: str, folder: Path) -> tuple[str, str]:
    """(policy folder, reward-model folder) for `name`."""
    from rlhfkit.models import load_scalar_model, load_tokenizer, smollm2, tiny_llama, train_tokenizer

    if name == "tiny":
        tokenizer = train_tokenizer([" ".join(WORDS)] * 50, vocab_size=300)
        policy = folder / "tiny"
        tiny_llama(tokenizer, hidden_size=256, num_layers=4, num_heads=4).save_pretrained(policy)
        tokenizer.save_pretrained(policy)
    else:
        policy = smollm2()
    tokenizer = load_tokenizer(str(policy))
    reward = folder / f"{name}-rm"
    load_scalar_model(str(policy), tokenizer).save_pretrained(reward)
    tokenizer.save_pretrained(reward)
    return str(policy), str(reward)


def main() -> None:
    from rlhfkit.algorithms.ppo import PPOTrainer
    from rlhfkit.config import PPOConfig
    from rlhfkit.runtime.loop import UpdateGuard

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prompts = write_prompts(folder / "prompts.jsonl", 64)
        print(
            f"{'model':<9} {'dtype':<5} {'iteration':<9} {'rollout':>8} {'score':>7} {'train':>7} "
            f"{'total':>7}"
        )
        for name in args.models:
            policy, reward = build_models(name, folder)
            # stop_tokens: none beyond EOS; missing_eos_penalty off; temperature 1 so EOS is rare
            config = PPOConfig(
                policy=policy,
                reward_model=reward,
                prompts=str(prompts),
                out=str(folder / "out"),
                max_steps=args.iterations,
                batch_size=16,
                mini_batch_size=8,
                ppo_epochs=4,
                response_length=32,
                temperature=1.0,
                normalize_reward=False,
                bf16=args.bf16,
            )
            trainer = PPOTrainer.create(config)
            # forbid EOS so every response has the full 32 tokens
            trainer.engine.stop_ids = trainer.engine.stop_ids.new_tensor([-1])
            guard, rows = UpdateGuard("bench", config.max_bad_steps), []
            for i in range(args.iterations):
                record = trainer.step(i + 1, guard)
                rows.append(record)
                phases = [record["time/rollout"], record["time/score"], record["time/train"]]
                label = "first" if i == 0 else str(i + 1)
                dtype = "bf16" if args.bf16 else "fp32"
                print(
                    f"{name:<9} {dtype:<5} {label:<9} "
                    + " ".join(f"{p:>7.2f}" for p in phases)
                    + f" {sum(phases):>7.2f}   (response length {record['response/length_mean']:.0f})",
                    flush=True,
                )
            rest = rows[1:] or rows
            mean = [sum(r[k] for r in rest) / len(rest) for k in ("time/rollout", "time/score", "time/train")]
            print(
                f"{name:<9} {dtype:<5} {'mean 2..':<9} "
                + " ".join(f"{p:>7.2f}" for p in mean)
                + f" {sum(mean):>7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
