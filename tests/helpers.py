"""Small data sets the tests write to disk."""

import json
import random

NOUNS = ["movie", "pizza", "phone", "hotel", "book", "song", "laptop", "cafe", "show", "game"]
GOOD = ["great", "lovely", "wonderful", "superb", "delightful"]
BAD = ["awful", "terrible", "boring", "dreadful", "horrible"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompt/completion rows: `the NOUN was` -> ` ADJ and ADJ.` of one sentiment."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choice([GOOD, BAD])
        rows.append(
            {
                "prompt": f"the {rng.choice(NOUNS)} was",
                "completion": f" {rng.choice(words)} and {rng.choice(words)}.",
            }
        )
    return rows


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    """Chosen is positive, rejected negative: a feature a reward model can learn."""
    rng = random.Random(seed)
    return [
        {
            "prompt": f"the {rng.choice(NOUNS)} was",
            "chosen": f" {rng.choice(GOOD)} and {rng.choice(GOOD)}.",
            "rejected": f" {rng.choice(BAD)} and {rng.choice(BAD)}.",
        }
        for _ in range(n)
    ]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def great_rows(n: int, seed: int = 0) -> list[dict]:
    """Preferences of a labeler who likes one word: chosen says `great`, rejected any other adjective."""
    rng = random.Random(seed)
    others = [w for w in GOOD + BAD if w != "great"]
    return [
        {
            "prompt": f"the {rng.choice(NOUNS)} was",
            "chosen": f" great and {rng.choice(others)}.",
            "rejected": f" {rng.choice(others)} and {rng.choice(others)}.",
        }
        for _ in range(n)
    ]


def prompt_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": f"the {rng.choice(NOUNS)} was"} for _ in range(n)]


def ppo_args(stack: tuple[str, str, str], out, *extra: str) -> list[str]:
    """`rlhfkit ppo` arguments for the tiny (sft, rm, prompts) stack, writing to `out`."""
    sft_dir, rm_dir, prompts = stack
    return [
        "ppo",
        "--policy",
        sft_dir,
        "--reward-model",
        rm_dir,
        "--prompts",
        prompts,
        "--out",
        str(out),
        *extra,
    ]
