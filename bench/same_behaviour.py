"""Same behaviour before and after a refactor: every command's outputs, compared to the last digit.

    .venv/bin/python bench/same_behaviour.py --before COMMIT [--full-demo]

Checks out COMMIT into a temporary git worktree, runs the same fixed-seed fp32 commands with its `src/` and
with this checkout's (`python -m rlhfkit.cli`, a fresh process each), and compares: every record of every
JSONL file written (metrics, samples, labels, data; timing fields aside), `eval.json`, `summary.json` (wall
times aside; stage configs on the keys both versions have), and the bytes of every saved weight file. Keys
only the new version writes are listed as additions, not differences. Prints one line per difference and a
closing count; exit status 1 on any difference.

The commands: sft (2 micro-batches, held-out eval), rm, label, eval (RM + gold + reference), ppo three ways
(defaults with reward normalisation; top-k/top-p + k3 + adaptive KL + whitened rewards + reward clip +
missing-EOS penalty + micro-batches; ptx), the reduced demo of the tests, and with `--full-demo` the default
demo of `make demo`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]
from helpers import SMALL_DEMO, metric_records  # noqa: E402  (the tests' reduced demo and record reader)

PPO_VARIANTS = {
    "ppo_default": [],
    "ppo_options": [
        "top_k=20",
        "top_p=0.9",
        "kl_estimator=k3",
        "kl_target=2.0",
        "whiten_rewards=true",
        "reward_clip=1.0",
        "missing_eos_penalty=-1.0",
        "micro_batch_size=2",
    ],
    "ppo_ptx": ["ptx_coef=0.5", "ptx_data={data}/sft.jsonl"],
}


def write_inputs(folder: Path) -> None:
    """A tiny Llama with a BPE tokenizer and the task's data (the same for both versions)."""
    from helpers import great_rows, prompt_rows, sentiment_rows, write_jsonl
    from rlhfkit.models import tiny_llama, train_tokenizer

    texts = [r["prompt"] + r["completion"] for r in sentiment_rows(400)]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    tiny_llama(tokenizer, hidden_size=64, num_layers=2, num_heads=4).save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    write_jsonl(folder / "sft.jsonl", sentiment_rows(400))
    write_jsonl(folder / "pairs.jsonl", great_rows(300))
    write_jsonl(folder / "prompts.jsonl", prompt_rows(200, seed=5))


def commands(data: Path, out: Path, full_demo: bool) -> dict[str, list[str]]:
    """name -> `rlhfkit` arguments, in the order they must run (later ones read earlier outputs)."""
    runs = {
        "sft": ["sft", "--model", f"{data}/base", "--data", f"{data}/sft.jsonl", "--out", f"{out}/sft",
                "max_steps=30", "batch_size=16", "grad_accum=2", "optim.lr=3e-3", "eval_every=10"],
        "rm": ["rm", "--model", f"{out}/sft", "--data", f"{data}/pairs.jsonl", "--out", f"{out}/rm",
               "max_steps=20", "batch_size=16", "optim.lr=1e-3", "eval_every=10"],
        "label": ["label", "--policy", f"{out}/sft", "--prompts", f"{data}/prompts.jsonl",
                  "--gold", "rlhfkit.tasks.sentiment:gold", "--out", f"{out}/label.jsonl",
                  "response_length=8", "batch_size=32"],
        "eval": ["eval", "--model", f"{out}/sft", "--prompts", f"{data}/prompts.jsonl",
                 "--reward-model", f"{out}/rm", "--gold", "rlhfkit.tasks.sentiment:gold",
                 "--reference", f"{out}/sft", "--out", f"{out}/eval", "response_length=8"],
    }  # fmt: skip
    for name, extra in PPO_VARIANTS.items():
        runs[name] = [
            "ppo", "--policy", f"{out}/sft", "--reward-model", f"{out}/rm",
            "--prompts", f"{data}/prompts.jsonl", "--out", f"{out}/{name}",
            "max_steps=4", "batch_size=8", "mini_batch_size=4", "response_length=10", "eval_every=2",
            *(e.format(data=data) for e in extra),
        ]  # fmt: skip
    runs["demo_small"] = ["demo", "--out", f"{out}/demo_small", *SMALL_DEMO]
    if full_demo:
        runs["demo_full"] = ["demo", "--out", f"{out}/demo_full"]
    return runs


def fingerprint(out: Path) -> dict[str, Any]:
    """Everything a run wrote that must not change, as plain JSON values (weights as sha256)."""
    found: dict[str, Any] = {}
    for path in sorted(out.rglob("*")):
        name = str(path.relative_to(out))
        if path.suffix == ".jsonl":
            found[name] = metric_records(path)
        elif path.name == "eval.json":
            found[name] = json.loads(path.read_text())
        elif path.name == "summary.json":
            summary = json.loads(path.read_text())
            summary.pop("wall_seconds", None)
            for numbers in summary.get("algorithms", {}).values():  # each algorithm's training time
                numbers.pop("train_seconds", None)
            configs = summary.pop("config", {})
            found[name] = summary
            for stage, values in configs.items():
                if stage != "demo":  # the demo's own config is reshaped on purpose; its stages are not
                    found[f"{name}:config.{stage}"] = values
        elif path.suffix == ".safetensors":
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def record(src: Path, work: Path, full_demo: bool) -> dict[str, Any]:
    """Run every command with the package in `src`; the fingerprint of their outputs."""
    # PYTHONPATH comes before the editable install on sys.path
    # fp32 on every CPU (`bf16: auto` would pick bf16 where the CPU multiplies it natively)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(src))
    env["RLHFKIT_AUTO_BF16"] = "false"
    data, out = work / "data", work / "out"
    for name, args in commands(data, out, full_demo).items():
        done = subprocess.run(
            [sys.executable, "-m", "rlhfkit.cli", *args], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"{name} failed with {src}:\n{done.stderr[-3000:]}")
        print(f"  ran {name}", flush=True)
    return fingerprint(out)


def compare(before: Any, after: Any, where: str = "") -> tuple[list[str], list[str]]:
    """(differences, additions): one line per leaf that differs or exists before only; keys that only the new
    version writes (new metrics, new config fields at their defaults) are additions."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: tuple[list[str], list[str]] = ([], [])
        for key in sorted(set(before) | set(after), key=str):
            if key not in after:
                found[0].append(f"{where}{key}: removed")
            elif key not in before:
                found[1].append(f"{where}{key}")
            else:
                inner = compare(before[key], after[key], f"{where}{key}.")
                found[0].extend(inner[0])
                found[1].extend(inner[1])
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        found = ([], [])
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            inner = compare(b, a, f"{where}{i}.")
            found[0].extend(inner[0])
            found[1].extend(inner[1])
        return found
    return ([] if before == after else [f"{where.rstrip('.')}: {before!r} -> {after!r}"]), []


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="git commit whose code gives the reference outputs")
    parser.add_argument("--full-demo", action="store_true", help="also the default demo (minutes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tree = tmp_path / "before-tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.before],
                       check=True, capture_output=True)  # fmt: skip
        try:
            # one working folder for both sides, emptied between them: paths in configs are the same
            work = tmp_path / "work"
            write_inputs(work / "data")
            print(f"before ({args.before}):", flush=True)
            before = record(tree / "src", work, args.full_demo)
            shutil.rmtree(work / "out")
            print("after (this checkout):", flush=True)
            after = record(ROOT / "src", work, args.full_demo)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    found, added = compare(before, after)
    for line in found:
        print(line)
    # an added key repeats on every record: list each name once, without the record index
    names = sorted({".".join(p for p in line.split(".") if not p.isdigit()) for line in added})
    if names:
        print("written only after (new keys):", ", ".join(names))
    print(f"{len(before)} outputs compared, {len(found)} differences")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
