"""Peak memory of a PPO run whose ptx term reads a large plain-text corpus (`{"text"}` rows): the corpus is
read lazily (an index of line offsets; only the drawn rows are parsed and tokenised), so the run's memory
should not grow with it. Also prints what the same corpus costs when read into Python lists (`load_records`).

    .venv/bin/python bench/ptx_memory.py [--rows 200000] [--iterations 2]

Each measurement runs in a fresh process (peak RSS from getrusage); the tiny model of bench/ppo_iteration.py.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ppo_iteration import WORDS, build_models, write_prompts  # noqa: E402
from ppo_vs_trl import child  # noqa: E402

PPO = """
import json, resource, sys, time
from rlhfkit.algorithms.ppo import ppo
from rlhfkit.config import PPOConfig, load_config
tick = time.perf_counter()
ppo(load_config(PPOConfig, overrides=sys.argv[1:]))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"rss_gib": rss, "seconds": time.perf_counter() - tick}))
"""

LISTS = """
import json, resource, sys
from rlhfkit.data import load_records
records = load_records(sys.argv[1], "sft")
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"rss_gib": rss, "rows": len(records)}))
"""


def write_corpus(path: Path, rows: int, seed: int = 0) -> Path:
    """`rows` documents of 40-120 task words each, one `{"text"}` JSONL row each."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(rows):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120)))
            handle.write(json.dumps({"text": words}) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        policy, reward = build_models("tiny", folder)
        prompts = write_prompts(folder / "prompts.jsonl", 256)
        print(f"{'ptx corpus':<28} {'file':>9} {'peak RSS':>9} {'run s':>7}", flush=True)
        for rows in (1_000, args.rows):
            corpus = write_corpus(folder / f"corpus-{rows}.jsonl", rows)
            result = child(
                PPO, f"policy={policy}", f"reward_model={reward}", f"prompts={prompts}",
                f"out={folder / 'ppo'}", "overwrite=true", f"max_steps={args.iterations}", "batch_size=16",
                "mini_batch_size=8",
                "response_length=16", "eval_every=0", "eval_holdout=4", "normalize_reward=false",
                "ptx_coef=0.5", f"ptx_data={corpus}", "bf16=false",
            )  # fmt: skip
            size = corpus.stat().st_size / 2**20
            print(
                f"{f'PPO, {rows:,} text rows':<28} {size:>6.1f} MiB {result['rss_gib']:>5.2f} GiB "
                f"{result['seconds']:>7.1f}",
                flush=True,
            )
        lists = child(LISTS, str(folder / f"corpus-{args.rows}.jsonl"))
        print(f"{f'load_records, {args.rows:,} rows':<28} {'':>9} {lists['rss_gib']:>5.2f} GiB {'-':>7}")


if __name__ == "__main__":
    main()
