"""`rlhfkit label`: a simulated human labels pairs of responses sampled from a policy.

For each prompt two responses are sampled and scored by the gold reward g (a function, or a reward-model
folder: Gao et al.'s set-up, a large gold RM labelling the pairs a small proxy learns from); the first is
chosen with probability sigmoid((g1 - g2) / tau) (Bradley-Terry noise; tau = 0 is a perfect labeler). Ties
are skipped.

With `best_of` N, rejection sampling instead: N responses per prompt, the one g scores highest kept as an SFT
row, for `rlhfkit sft` (sample, keep the best, fine-tune on them).
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import LabelConfig
from rlhfkit.errors import UsageError
from rlhfkit.jobs.evaluate import best_rows, repeated
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.rollout import LocalSampler, RolloutEngine, SamplingSettings, stop_token_ids
from rlhfkit.rollout.completions import Completions, load_prompts, sample_completions
from rlhfkit.runtime.metrics import progress
from rlhfkit.runtime.process import quiet_transformers
from rlhfkit.tasks import load_gold
from rlhfkit.tasks.rewards import RewardFunctionError
from rlhfkit.tasks.scorers import Scorer, callable_scorer, model_scorer


def prefers_first(g1: float, g2: float, tau: float, rng: random.Random) -> bool:
    """The noisy labeler's choice: True with probability sigmoid((g1 - g2) / tau); exact when tau = 0."""
    if tau <= 0:
        return g1 > g2
    z = (g1 - g2) / tau
    return rng.random() < 1 / (1 + math.exp(-z)) if z > -700 else False


def preference_row(prompt: str, messages: list[dict] | None, chosen: str, rejected: str) -> dict:
    """One labelled pair as `rm` reads it: text for a text prompt; for a conversation, its messages and two
    assistant turns, so that `rm` renders them with the chat template and reads each at the end of the turn,
    as PPO reads the policy's turn (the gold function saw the rendered text)."""
    if messages is None:
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    def turn(content: str) -> list[dict]:
        return [{"role": "assistant", "content": content}]

    return {"prompt": messages, "chosen": turn(chosen), "rejected": turn(rejected)}


def sft_row(prompt: str, messages: list[dict] | None, completion: str) -> dict:
    """One kept sample as `sft` reads it: {prompt, completion} for a text prompt; for a conversation, its
    messages and the assistant's turn, so that `sft` renders it with the chat template, as it was sampled."""
    if messages is None:
        return {"prompt": prompt, "completion": completion}
    return {"messages": [*messages, {"role": "assistant", "content": completion}]}


def gold_scorer(spec: str) -> Scorer:
    """`--gold`: a reward-model folder, or `module:function`; a bad one is a UsageError."""
    return model_scorer(spec, "gold") if Path(spec).is_dir() else callable_scorer(load_gold(spec), spec)


def gold_scores(gold: Scorer, done: Completions, messages: list[list[dict] | None]) -> list[float]:
    """Gold's score of every response of the batch, in one call (`messages`: each row's conversation, None
    for a text prompt); a function that fails is a UsageError."""
    try:
        return gold.score(
            done.prompts, done.responses, messages=messages, finished=done.rollout.stopped.tolist()
        )
    except RewardFunctionError as exc:
        raise UsageError(str(exc)) from None


def best_of_rows(
    config: LabelConfig,
    gold: Scorer,
    engine: RolloutEngine,
    tokenizer: Any,
    prompts: tuple[list[str], list[list[int]], list[list[dict] | None]],
) -> tuple[list[dict], dict]:
    """Rejection sampling: `best_of` responses per prompt, the one gold scores highest (the first on a tie)
    kept as an SFT row. Returns (rows, {rows, gold_kept, gold_sampled, unfinished})."""
    n, (texts, prompt_ids, messages) = config.best_of, prompts
    settings = SamplingSettings(config.response_length, config.temperature)
    generator = torch.Generator().manual_seed(config.seed)
    rows, kept, sampled, unfinished = [], [], [], 0
    batch = config.batch_size * n  # `batch_size` prompts, each n times in a row: whole groups per batch
    messages = repeated(messages, n)
    with progress(math.ceil(len(texts) / config.batch_size), "label") as bar:
        for done in sample_completions(
            engine, tokenizer, repeated(texts, n), repeated(prompt_ids, n), settings, batch, generator
        ):
            first = len(sampled)  # the batch's first row
            scores = gold_scores(gold, done, messages[first : first + len(done.responses)])
            for k in best_rows(scores, n):
                rows.append(sft_row(done.prompts[k], messages[first + k], done.responses[k]))
                kept.append(scores[k])
                unfinished += not bool(done.rollout.stopped[k])  # SFT will teach a stop after it
            sampled += scores
            bar.update()
    return rows, {
        "rows": len(rows),
        "gold_kept": sum(kept) / len(kept),
        "gold_sampled": sum(sampled) / len(sampled),
        "unfinished": unfinished,
    }


def write_rows(out: Path, rows: list[dict]) -> None:
    """JSONL rows to `out`, staged and moved into place (a stopped run leaves no half file)."""
    staging = out.with_name(f".{out.name}.tmp")
    staging.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(staging, out)


def label(config: LabelConfig) -> dict:
    """Write preference rows to `config.out`; returns {pairs, ties_skipped, label_agreement}. With
    `best_of`, SFT rows of the best sample per prompt; returns {rows, gold_kept, gold_sampled, unfinished}."""
    out = Path(config.out)
    if out.exists() and not config.overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    gold = gold_scorer(config.gold)
    quiet_transformers()
    tokenizer = load_tokenizer(config.policy)
    texts, prompt_ids, messages = load_prompts(
        config.prompts, tokenizer, config.max_prompt_length, config.columns
    )
    engine = LocalSampler(
        load_causal_lm(config.policy, tokenizer).eval(), tokenizer, stop_token_ids(tokenizer)
    )
    if config.best_of:
        rows, stats = best_of_rows(config, gold, engine, tokenizer, (texts, prompt_ids, messages))
        write_rows(out, rows)
        return stats
    # each prompt twice in a row: rows 2i and 2i + 1 are a pair
    texts = [t for t in texts for _ in range(2 * config.pairs_per_prompt)]
    prompt_ids = [p for p in prompt_ids for _ in range(2 * config.pairs_per_prompt)]
    messages = [m for m in messages for _ in range(2 * config.pairs_per_prompt)]
    settings = SamplingSettings(config.response_length, config.temperature)
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    rows, ties, agree, offset = [], 0, 0, 0  # offset: the batch's first row in the prompt list
    batch = config.batch_size + config.batch_size % 2  # even, so pairs never straddle two batches
    with progress(len(prompt_ids) // batch + 1, "label") as bar:
        for done in sample_completions(engine, tokenizer, texts, prompt_ids, settings, batch, generator):
            scores = gold_scores(gold, done, messages[offset : offset + len(done.responses)])
            for i in range(0, len(done.responses), 2):
                prompt, first, second = done.prompts[i], done.responses[i], done.responses[i + 1]
                g1, g2 = scores[i], scores[i + 1]
                if g1 == g2 or first == second:
                    ties += 1
                    continue
                chosen, rejected = (
                    (first, second) if prefers_first(g1, g2, config.tau, rng) else (second, first)
                )
                agree += (chosen == first) == (g1 > g2)
                rows.append(preference_row(prompt, messages[offset + i], chosen, rejected))
            offset += len(done.responses)
            bar.update()
    if not rows:
        raise UsageError(f"every sampled pair was a tie under {config.gold}; nothing to write")
    write_rows(out, rows)
    return {"pairs": len(rows), "ties_skipped": ties, "label_agreement": agree / len(rows)}
