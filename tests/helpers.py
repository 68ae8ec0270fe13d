"""Small data sets the tests write to disk, and the readers they share."""

import json
import os
import random
from pathlib import Path
from typing import Any

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


def ppo_config(stack: tuple[str, str, str], out, **overrides):
    """A PPOConfig for the tiny (sft, rm, prompts) stack: short iterations, `overrides` on top."""
    from rlhfkit.config import PPOConfig

    sft_dir, rm_dir, prompts = stack
    fields = dict(
        policy=sft_dir,
        reward_model=rm_dir,
        prompts=prompts,
        out=str(out),
        max_steps=3,
        batch_size=8,
        mini_batch_size=4,
        response_length=10,
        normalize_reward=False,
        actor_lr=1e-4,
        critic_lr=1e-4,
        eval_every=0,
    )
    return PPOConfig(**{**fields, **overrides})


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


# Fields that depend on the machine's speed: left out wherever two runs' records are compared.
TIMING = ("time/", "steps_per_s", "episodes_per_s", "wall_seconds")


def metric_records(path: Path) -> list[dict]:
    """The records of a JSONL file (metrics, samples) without their timing fields."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


# A demo of a few steps of every stage, in the demo's old flat key names (still accepted as aliases).
SMALL_DEMO = [
    "demonstrations=800",
    "eval_prompts=16",
    "vocab_size=400",
    "hidden_size=64",
    "num_layers=2",
    "sft_epochs=2",
    "pairs_per_prompt=1",
    "rm_epochs=1",
    "ppo_steps=4",
    "ppo_batch_size=8",
    "ppo_mini_batch_size=4",
    "ppo_epochs=1",
    "response_length=8",
    "ppo_eval_every=2",
]


# Reward functions for `reward_functions=helpers:NAME` (the tests folder is on sys.path; CLI tests add it to
# PYTHONPATH). `great_reward` pays what the tiny stack's RM learnt to like.
def great_reward(prompt: str, response: str) -> float:
    return float(response.count("great"))


def length_reward(prompt: str, response: str) -> float:
    return len(response.split()) / 10


def great_reward_batched(prompts: list[str], responses: list[str]) -> list[float]:
    return [great_reward(p, r) for p, r in zip(prompts, responses, strict=True)]


great_reward_batched.batched = True


async def great_reward_async(prompt: str, response: str) -> float:
    import asyncio

    await asyncio.sleep(0)
    return great_reward(prompt, response)


CALLS = {"n": 0}


def fails_after_two_batches(prompt: str, response: str) -> float:
    """Scores normally through the first two PPO iterations' batches, then raises (a flaky service)."""
    CALLS["n"] += 1
    if CALLS["n"] > int(os.environ.get("RLHFKIT_TEST_FAIL_AFTER", "17")):
        raise ConnectionError("the verifier is down")
    return great_reward(prompt, response)


def chatml(tokenizer: Any) -> Any:
    """A copy of `tokenizer` with ChatML's turns: `<|im_start|>role\\ncontent<|im_end|>\\n`, EOS not used
    (its end of turn, `<|im_end|>`, is not EOS)."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok
