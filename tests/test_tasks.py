"""The bundled task, the simulated labeler and the evaluation command."""

import json
import math
import random

import pytest

from rlhfkit.config import EvalConfig, LabelConfig
from rlhfkit.errors import UsageError
from rlhfkit.jobs.label import label, prefers_first
from rlhfkit.tasks import load_gold, sentiment_task
from rlhfkit.tasks.sentiment import gold


def test_gold_scores_positive_text_above_negative_text():
    assert gold("", " the food was wonderful and the staff were lovely.") > 0.5
    assert gold("", " the food was awful and the service was terrible.") < -0.5
    assert (
        gold("", " the food was wonderful.")
        > gold("", " the food was okay.")
        > gold("", " the food was awful.")
    )


def test_task_keeps_held_out_prompts_apart_and_is_deterministic():
    task = sentiment_task(n_demonstrations=500, n_eval_prompts=64, seed=3)
    assert len(task.eval_prompts) == 64 and not set(task.eval_prompts) & set(task.train_prompts)
    assert not {d["prompt"] for d in task.demonstrations} & set(task.eval_prompts)
    assert sentiment_task(500, 64, seed=3).demonstrations == task.demonstrations
    scores = [task.gold(d["prompt"], d["completion"]) for d in task.demonstrations]
    assert min(scores) < -0.5 and max(scores) > 0.5  # mixed sentiment, so there is something to learn


def test_load_gold_accepts_module_function_and_names_bad_specs():
    assert load_gold("rlhfkit.tasks.sentiment:gold") is gold
    for spec, message in [
        ("nocolon", "module:function"),
        ("no_such_module:f", "cannot import"),
        ("rlhfkit.tasks.sentiment:nothing", "no callable 'nothing'"),
    ]:
        with pytest.raises(UsageError, match=message):
            load_gold(spec)


def test_noisy_labeler_follows_bradley_terry():
    rng = random.Random(0)
    assert prefers_first(0.3, 0.1, 0.0, rng) and not prefers_first(0.1, 0.3, 0.0, rng)
    # g1 - g2 = 0.1, tau = 0.1: P(first) = sigmoid(1) = 0.731
    n = 20000
    share = sum(prefers_first(0.6, 0.5, 0.1, rng) for _ in range(n)) / n
    assert abs(share - 1 / (1 + math.exp(-1))) < 0.015


def test_label_with_perfect_labeler_agrees_with_gold(rlhf_stack, tmp_path):
    sft_dir, _, prompts = rlhf_stack
    out = tmp_path / "prefs.jsonl"
    stats = label(
        LabelConfig(
            policy=sft_dir,
            prompts=prompts,
            gold="rlhfkit.tasks.sentiment:gold",
            out=str(out),
            tau=0.0,
            response_length=10,
            temperature=1.0,
        )
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats["pairs"] == len(rows) > 50 and stats["label_agreement"] == 1.0
    assert stats["pairs"] + stats["ties_skipped"] == 200  # one pair per prompt
    for row in rows:  # every non-tied pair ordered as gold orders it
        assert gold(row["prompt"], row["chosen"]) > gold(row["prompt"], row["rejected"])
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        label(LabelConfig(policy=sft_dir, prompts=prompts, gold="rlhfkit.tasks.sentiment:gold", out=str(out)))


def test_noisy_label_agreement_is_below_one(rlhf_stack, tmp_path):
    sft_dir, _, prompts = rlhf_stack
    stats = label(
        LabelConfig(
            policy=sft_dir,
            prompts=prompts,
            gold="rlhfkit.tasks.sentiment:gold",
            out=str(tmp_path / "noisy.jsonl"),
            tau=1.0,
            response_length=10,
            temperature=1.0,
        )
    )
    assert 0.4 < stats["label_agreement"] < 0.95


def test_eval_reports_reward_gold_kl_length_and_stop_rate(rlhf_stack, tmp_path):
    from rlhfkit.jobs.evaluate import evaluate

    sft_dir, rm_dir, prompts = rlhf_stack
    result = evaluate(
        EvalConfig(
            model=sft_dir,
            prompts=prompts,
            reward_model=rm_dir,
            reference=sft_dir,
            gold="rlhfkit.tasks.sentiment:gold",
            response_length=10,
            out=str(tmp_path / "ev"),
        )
    )
    metrics = result["metrics"]
    assert set(metrics) == {"reward", "gold", "kl", "length", "stop_rate"}
    assert metrics["kl"] == 0.0  # the model against itself
    assert 0 < metrics["length"] <= 10 and 0 <= metrics["stop_rate"] <= 1
    assert len(result["samples"]) == 200
    assert json.loads((tmp_path / "ev" / "eval.json").read_text()) == metrics


def test_python_api_names_are_the_functions():
    import rlhfkit
    import rlhfkit.jobs.demo  # noqa: F401
    import rlhfkit.jobs.evaluate  # noqa: F401  (submodules imported first must not shadow the functions)
    import rlhfkit.jobs.label  # noqa: F401

    for name in ("sft", "train_reward_model", "ppo", "label", "evaluate", "demo"):
        assert callable(getattr(rlhfkit, name)) and getattr(rlhfkit, name).__name__ == name
