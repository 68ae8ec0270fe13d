"""rlhfkit offline DPO next to TRL 1.12's DPOTrainer on the same model, pairs, batches and settings: seconds
per step, peak memory, and every step's loss side by side (with sigmoid they agree to float rounding).

    pip install --no-deps trl==1.12.0      # the benchmark's environment only: never an rlhfkit dependency
                                           # (or --target DIR, then run with PYTHONPATH=DIR)
    .venv/bin/python bench/dpo_vs_trl.py [--models tiny smollm2-shape 1.1b] [--steps 6] [--batch 16]
        [--response 24] [--lr 1e-4] [--beta 0.1] [--trl-reference precompute|per-step] [--bf16] [--repeats 1]

Both run in fresh processes, one engine per process, on the same saved model (random weights) and the same
`batch × steps` pairs (one epoch): prompts of 12 task words, chosen and rejected responses of `response / 2`
to `response` words, each beginning with a blank so that its text tokenises the same alone or after the
prompt. What is made the same, and how:

- Token ids. TRL tokenises the prompt (with the tokenizer's BOS) and prompt + response + EOS as one text;
  rlhfkit the prompt with special tokens, the response without, then the EOS id. The script checks that
  both give every pair the same ids (TRL's tokenised dataset comes back from its process) and stops if not.
- Batches. rlhfkit visits the pairs in its seeded order (`rlhfkit.data.order.batch_indices`); TRL gets the
  pairs in that order and a sequential sampler, so step k trains on the same pairs in both.
- Optimisation. AdamW (fused in both), `lr`, linear decay to 0 over `steps` with no warm-up (rlhfkit:
  `optim.warmup_ratio=0`; TRL: `warmup_steps=0`), weight decay 0, eps 1e-8, gradient norm clipped at 1.0, no
  gradient accumulation, no gradient checkpointing (TRL's default is on), fp32 weights (`--bf16`: bf16
  autocast in both), dropout off (rlhfkit: eval mode; TRL: `disable_dropout`), no held-out evaluation.
- Reference. rlhfkit scores the pairs with the reference once, before its first step; TRL does the same with
  `precompute_ref_log_probs=True` (`--trl-reference per-step`: TRL's default, a reference forward pass in
  every step, with the reference model held in memory).

Seconds per step: rlhfkit's from its run loop's clock (`steps_per_s` in metrics.jsonl), TRL's between its
`on_step_end` callbacks; the first step is reported apart (warm-up), the rest are averaged (`--repeats N`:
the engines take turns N times and each keeps its fastest run). `wall s`: the whole process (imports,
loading, tokenising, the reference pass, saving). Peak memory: each process's max RSS
(and CUDA peak on a GPU). Losses: rlhfkit's from metrics.jsonl, TRL's as its `compute_loss` returns them.
Models: `tiny` (a 4-layer × 256 Llama), `smollm2-shape` (SmolLM2-135M's shape, vocab 49,153), `1.1b`
(TinyLlama's shape), all random weights with a small byte-level BPE tokenizer.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ppo_iteration import WORDS  # noqa: E402

# rlhfkit: the `rlhfkit dpo` command itself. argv: its arguments; prints its metrics rows and peak memory.
RLHFKIT = """
import json, resource, sys, torch
from pathlib import Path
from rlhfkit.cli import main
status = main(["dpo", *sys.argv[1:]])
if status:
    raise SystemExit(f"rlhfkit dpo exited with {status}")
out = Path(sys.argv[sys.argv.index("--out") + 1])
rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
cuda = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"rows": rows, "rss_gib": rss, "cuda_gib": cuda}))
"""

# TRL 1.12: DPOTrainer.train() on the pairs in rlhfkit's order, timed between its step-end callbacks; its
# loss read where compute_loss returns it (older transformers rounded the logged one to 4 digits). argv: a
# JSON of settings.
TRL = """
import json, resource, sys, tempfile, time, torch
from datasets import Dataset
from torch.utils.data import SequentialSampler
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer
s = json.loads(sys.argv[1])
rows = [json.loads(line) for line in open(s["pairs"])]
dataset = Dataset.from_list([rows[i] for i in s["order"]])
stamps, losses, logged = [], [], []
class Stamp(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "grad_norm" in logs:  # a training step's log (TRL's metrics, grad norm, lr)
            logged.append(dict(logs))
class InOrder(DPOTrainer):
    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)  # the rows are already in rlhfkit's order
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        losses.append((result[0] if return_outputs else result).item())
        return result
config = DPOConfig(
    output_dir=tempfile.mkdtemp(), per_device_train_batch_size=s["batch"], gradient_accumulation_steps=1,
    max_steps=s["steps"], learning_rate=s["lr"], lr_scheduler_type="linear", warmup_steps=0,
    weight_decay=0.0, adam_epsilon=1e-8, max_grad_norm=1.0, beta=s["beta"], loss_type=["sigmoid"],
    max_length=None, precompute_ref_log_probs=s["precompute"], gradient_checkpointing=False,
    disable_dropout=True, bf16=s["bf16"], use_cpu=not torch.cuda.is_available(), report_to="none",
    save_strategy="no", eval_strategy="no", logging_steps=1, seed=0,
)
trainer = InOrder(
    model=AutoModelForCausalLM.from_pretrained(s["model"], dtype=torch.float32), args=config,
    processing_class=AutoTokenizer.from_pretrained(s["model"]), train_dataset=dataset, callbacks=[Stamp()],
)
ids = [[r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]] for r in trainer.train_dataset]
stamps.append(time.perf_counter())
trainer.train()
times = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
cuda = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
result = {"times": times, "losses": losses, "logs": logged, "ids": ids, "rss_gib": rss, "cuda_gib": cuda}
print(json.dumps(result))
"""

SHAPES = {
    "tiny": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4),
    "smollm2-shape": dict(vocab_size=49153, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3),
    "1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4),
}  # fmt: skip


def build_model(name: str, folder: Path) -> str:
    """A causal-LM folder of shape `name` with random weights and a byte-level BPE tokenizer of the task
    words (BOS added to encodings with special tokens, EOS `</s>`)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhfkit.models import train_tokenizer

    tokenizer = train_tokenizer([" ".join(WORDS)] * 50, vocab_size=300)
    config = LlamaConfig(
        **{"vocab_size": len(tokenizer), **SHAPES[name]},
        max_position_embeddings=2048,
        tie_word_embeddings=name != "1.1b",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    path = folder / name
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def write_pairs(path: Path, count: int, response: int, seed: int = 0) -> Path:
    """`count` {prompt, chosen, rejected} rows: 12 task words, then two responses of `response / 2` to
    `response` words, each beginning with a blank (the same tokens alone or after the prompt)."""
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    def reply() -> str:
        return " " + words(rng.randint(max(1, response // 2), response))

    rows = [{"prompt": words(12), "chosen": reply(), "rejected": reply()} for _ in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rlhfkit_order(count: int, batch: int, steps: int, seed: int) -> list[int]:
    """The pair indices rlhfkit's steps 1..`steps` train on, in order (one batch after another)."""
    from rlhfkit.data.order import batch_indices

    return [i for step in range(steps) for i in batch_indices(count, batch, seed, step, drop_last=False)[1]]


def check_same_ids(model: str, pairs: Path, order: list[int], trl_ids: list) -> None:
    """Stop unless TRL's tokenised pairs (prompt, chosen, rejected ids; in `order`) are rlhfkit's."""
    from rlhfkit.data import encode_pairs, load_records
    from rlhfkit.models import load_tokenizer

    ours = encode_pairs(load_records(str(pairs), "preference"), load_tokenizer(model), 4096)
    for index, (prompt, chosen, rejected) in zip(order, trl_ids, strict=True):
        mine = ours[index]
        if (mine.chosen, mine.rejected, mine.prompt_length) != (
            prompt + chosen, prompt + rejected, len(prompt)
        ):  # fmt: skip
            raise SystemExit(f"pair {index}: TRL's token ids differ from rlhfkit's; the comparison is void")


def child(code: str, *args: str) -> tuple[dict, float]:
    """The last stdout line of `python -c code args` as JSON, and the process's wall-clock seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - started


def step_seconds(rows: list[dict]) -> list[float]:
    """Each step's seconds from the run loop's running `steps_per_s` (steps so far / seconds so far)."""
    elapsed = [r["step"] / r["steps_per_s"] for r in rows]
    return [b - a for a, b in zip([0.0] + elapsed[:-1], elapsed, strict=True)]


def run_trl(model: str, pairs: Path, order: list[int], args: argparse.Namespace) -> dict:
    """One TRL process on the pairs in `order`, after checking its token ids are rlhfkit's."""
    trl, wall = child(TRL, json.dumps({
        "model": model, "pairs": str(pairs), "order": order, "batch": args.batch, "steps": args.steps,
        "lr": args.lr, "beta": args.beta, "precompute": args.trl_reference == "precompute", "bf16": args.bf16,
    }))  # fmt: skip
    check_same_ids(model, pairs, order, trl["ids"])
    return {
        "times": trl["times"], "losses": trl["losses"], "grad_norms": [g["grad_norm"] for g in trl["logs"]],
        "lrs": [g["learning_rate"] for g in trl["logs"]], "wall": wall, "rss_gib": trl["rss_gib"],
        "cuda_gib": trl["cuda_gib"],
    }  # fmt: skip


def run_rlhfkit(model: str, pairs: Path, out: Path, args: argparse.Namespace) -> dict:
    """One `rlhfkit dpo` process with TRL's settings (see the module's docstring)."""
    ours, wall = child(RLHFKIT, *[
        "--model", model, "--data", str(pairs), "--out", str(out), "overwrite=true",
        f"max_steps={args.steps}", f"batch_size={args.batch}", f"optim.lr={args.lr}", "optim.warmup_ratio=0",
        "optim.schedule=linear", "optim.weight_decay=0", "optim.adam_eps=1e-8", "optim.max_grad_norm=1.0",
        f"beta={args.beta}", "loss_type=sigmoid", "eval_fraction=0", "max_length=4096", "seed=0",
        f"bf16={str(args.bf16).lower()}",
    ])  # fmt: skip
    rows = ours["rows"]
    return {
        "times": step_seconds(rows), "losses": [r["loss"] for r in rows],
        "grad_norms": [r["grad_norm"] for r in rows], "wall": wall,
        # rlhfkit records the rate after the step's scheduler update; TRL logs the one the step used
        "lrs": [args.lr] + [r["lr"] for r in rows[:-1]],
        "rss_gib": ours["rss_gib"], "cuda_gib": ours["cuda_gib"],
    }  # fmt: skip


def later_steps(times: list[float]) -> float:
    """Mean seconds of the steps after the first (of the only one, if there is one step)."""
    later = times[1:] or times
    return sum(later) / len(later)


def run_pair(name: str, folder: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """(rlhfkit's, TRL's) results for model `name`: times, losses, peak memory. With `repeats` > 1 the
    engines take turns and each keeps its fastest run (a shared machine's load only ever slows a run)."""
    model = build_model(name, folder)
    count = args.batch * args.steps
    pairs = write_pairs(folder / f"{name}-pairs.jsonl", count, args.response)
    order = rlhfkit_order(count, args.batch, args.steps, seed=0)
    runs: dict[str, list[dict]] = {"trl": [], "rlhfkit": []}
    for _ in range(args.repeats):
        runs["trl"].append(run_trl(model, pairs, order, args))
        runs["rlhfkit"].append(run_rlhfkit(model, pairs, folder / f"{name}-dpo", args))
    best = {k: min(v, key=lambda run: later_steps(run["times"])) for k, v in runs.items()}
    return best["rlhfkit"], best["trl"]


def print_speed(name: str, ours: dict, trl: dict) -> None:
    """Two rows of the speed table: first step, mean of the rest, wall, peak memory, TRL's time / ours."""

    def row(engine: str, result: dict, ratio: float) -> str:
        cuda = f"{result['cuda_gib']:.2f} GiB" if result["cuda_gib"] is not None else "-"
        return (
            f"{name:<14} {engine:<8} {result['times'][0]:>8.3f} {later_steps(result['times']):>7.3f} "
            f"{result['wall']:>7.1f} {result['rss_gib']:>6.2f} GiB {cuda:>10} {ratio:>6.2f}x"
        )

    print(row("rlhfkit", ours, later_steps(trl["times"]) / later_steps(ours["times"])), flush=True)
    print(row("TRL 1.12", trl, 1.0), flush=True)


def print_losses(name: str, ours: dict, trl: dict) -> None:
    """Every step's loss, gradient norm and learning rate in both, and the largest loss difference."""
    print(
        f"\n{name}: step, loss (rlhfkit, TRL, |diff|), grad norm before clipping (rlhfkit, TRL), the "
        "step's learning rate (rlhfkit, TRL)"
    )
    columns = [ours["losses"], trl["losses"], ours["grad_norms"], trl["grad_norms"], ours["lrs"], trl["lrs"]]
    diffs = []
    for step, values in enumerate(zip(*columns, strict=True), start=1):
        loss, trl_loss, norm, trl_norm, lr, trl_lr = values
        diffs.append(abs(loss - trl_loss))
        print(
            f"  {step:>3} {loss:>12.8f} {trl_loss:>12.8f} {diffs[-1]:>9.2e}   {norm:>10.6f} {trl_norm:>10.6f}"
            f"   {lr:.3e} {trl_lr:.3e}"
        )
    print(f"  max |loss difference| over {len(diffs)} steps: {max(diffs):.2e}\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny"], choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16, help="pairs per step")
    parser.add_argument("--response", type=int, default=24, help="the longest response, in words")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--trl-reference", choices=["precompute", "per-step"], default="precompute")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per engine, in turns; the fastest is kept"
    )
    args = parser.parse_args()
    print(
        f"{'model':<14} {'engine':<8} {'first s':>8} {'s/step':>7} {'wall s':>7} {'peak RSS':>10} "
        f"{'peak CUDA':>10} {'vs TRL':>7}",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results[name] = run_pair(name, Path(tmp), args)
            print_speed(name, *results[name])
    for name, (ours, trl) in results.items():
        print_losses(name, ours, trl)


if __name__ == "__main__":
    main()
