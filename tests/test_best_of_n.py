"""Best-of-N: `eval --best-of N` (keep the proxy's favourite of N samples, measure it by gold) and
`label --best-of N` (rejection sampling: the gold's favourite as an SFT row)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import length_reward, prompt_rows, write_jsonl
from rlhfkit.config import EvalConfig, LabelConfig
from rlhfkit.core import best_of_n_kl
from rlhfkit.errors import ConfigError, UsageError
from rlhfkit.jobs.evaluate import best_rows, evaluate, repeated
from rlhfkit.jobs.label import sft_row

TESTS = Path(__file__).parent
GOLD = "rlhfkit.tasks.sentiment:gold"
LENGTH = "helpers:length_reward"  # len(words) / 10: tests/ is on sys.path


@pytest.fixture(scope="module")
def small_prompts(tmp_path_factory):
    """24 prompts: enough for means to move, few enough for seconds."""
    return write_jsonl(tmp_path_factory.mktemp("bon") / "prompts.jsonl", prompt_rows(24, seed=3))


def eval_config(stack, prompts, **fields) -> EvalConfig:
    sft_dir, _, _ = stack
    return EvalConfig(
        **{"model": sft_dir, "prompts": prompts, "response_length": 8, "batch_size": 8, **fields}
    )


def sampled(model_dir: str, prompts: str, n: int, batch_rows: int, seed: int = 0, temperature: float = 0.7):
    """The naive twin of eval's sampling: every prompt n times in a row, `batch_rows` rows per generate call,
    one generator seeded once; -> the Completions batches."""
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.rollout import LocalSampler, SamplingSettings, stop_token_ids
    from rlhfkit.rollout.completions import load_prompts, sample_completions

    tok = load_tokenizer(model_dir)
    texts, ids, _ = load_prompts(prompts, tok, 1024)
    engine = LocalSampler(load_causal_lm(model_dir, tok).eval(), tok, stop_token_ids(tok))
    generator = torch.Generator().manual_seed(seed)
    settings = SamplingSettings(8, temperature)
    return list(
        sample_completions(engine, tok, repeated(texts, n), repeated(ids, n), settings, batch_rows, generator)
    )


# ------------------------------------------------------------------------------------------ pure parts


def test_best_of_n_kl_by_hand():
    # log N - (N - 1)/N: N = 1 -> 0 - 0 = 0; N = 2 -> 0.693147 - 0.5; N = 4 -> 1.386294 - 0.75
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(0.1931471806, abs=1e-10)
    assert best_of_n_kl(4) == pytest.approx(0.6362943611, abs=1e-10)
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n_kl(0)


def test_best_rows_takes_each_groups_argmax_and_the_first_on_a_tie():
    scores = [1.0, 3.0, 2.0, 5.0, 5.0, 0.0]
    assert best_rows(scores, 3) == [1, 3]  # (1, 3, 2) -> row 1; (5, 5, 0) -> row 3, the first 5
    assert best_rows(scores, 2) == [1, 3, 4]  # (1, 3) -> 1; (2, 5) -> 3; (5, 0) -> 4
    assert best_rows(scores, 1) == [0, 1, 2, 3, 4, 5]


def test_sft_row_is_text_or_a_conversation_ending_in_the_assistants_turn():
    assert sft_row("the movie was", None, " great.") == {"prompt": "the movie was", "completion": " great."}
    messages = [{"role": "user", "content": "the movie was"}]
    assert sft_row("<rendered>", messages, "great") == {
        "messages": [*messages, {"role": "assistant", "content": "great"}]
    }


# ------------------------------------------------------------------------------------------------ eval


def test_best_of_one_is_the_eval_of_before(rlhf_stack, small_prompts):
    """best_of = 1 samples and measures exactly as eval always did: one generator, `batch_size` prompts per
    call; the RM read at the end (EOS) as `rm` read its pairs; the KL of the model against itself is 0."""
    from rlhfkit.data import pad
    from rlhfkit.models import load_scalar_model, load_tokenizer, sequence_scores
    from rlhfkit.rollout.completions import ReadingPoints
    from rlhfkit.tasks.sentiment import gold

    sft_dir, rm_dir, _ = rlhf_stack
    result = evaluate(
        eval_config(rlhf_stack, small_prompts, reward_model=rm_dir, reference=sft_dir, gold=GOLD)
    )
    assert list(result["metrics"]) == ["reward", "gold", "kl", "length", "stop_rate"]  # as before, in order
    batches = sampled(sft_dir, small_prompts, 1, 8)
    twin = [
        (p, r, b, i) for b in batches for i, (p, r) in enumerate(zip(b.prompts, b.responses, strict=True))
    ]
    assert [(s["prompt"], s["response"]) for s in result["samples"]] == [(p, r) for p, r, _, _ in twin]
    tok = load_tokenizer(sft_dir)
    rm, reading = load_scalar_model(rm_dir, tok).eval(), ReadingPoints.of(tok)
    for sample, (prompt, response, batch, i) in zip(result["samples"], twin, strict=True):
        rollout = batch.rollout
        ids, mask = rollout.input_ids[i : i + 1], rollout.attention_mask[i : i + 1]
        read = reading.read(ids, mask, rollout.stopped[i : i + 1], [False])
        kept = read[0][read[1].bool()].tolist()  # unpadded, scored alone
        with torch.no_grad():
            expected = sequence_scores(rm, *pad([kept], tok.pad_token_id, "right")).item()
        assert sample["reward"] == pytest.approx(expected, abs=1e-4)
        assert sample["gold"] == gold(prompt, response) and sample["kl"] == 0.0
        assert sample["length"] == int(rollout.response_mask[i].sum()) and "candidates" not in sample
    metrics = result["metrics"]
    assert metrics["gold"] == pytest.approx(sum(s["gold"] for s in result["samples"]) / 24)


def test_kept_response_is_the_argmax_of_its_sampled_candidates(rlhf_stack, small_prompts):
    """With a known proxy (words / 10) the kept response is the highest-scoring of the prompt's 4 candidates
    (the first on a tie), and the candidates are rows 4i..4i+3 of sampling each prompt 4 times in a row,
    8 prompts (32 rows) per call."""
    sft_dir, _, _ = rlhf_stack
    result = evaluate(eval_config(rlhf_stack, small_prompts, reward_functions=(LENGTH,), best_of=4))
    twin = [r for b in sampled(sft_dir, small_prompts, 4, 32) for r in b.responses]
    assert len(result["samples"]) == 24 and len(twin) == 96
    for i, sample in enumerate(result["samples"]):
        candidates = sample["candidates"]
        assert [c["response"] for c in candidates] == twin[4 * i : 4 * i + 4]
        scores = [length_reward(sample["prompt"], c["response"]) for c in candidates]
        assert [c["reward"] for c in candidates] == scores
        assert sample["response"] == candidates[scores.index(max(scores))]["response"]
        assert sample["reward"] == max(scores)
    assert result["metrics"]["best_of"] == 4
    assert result["metrics"]["kl_best_of_n"] == pytest.approx(math.log(4) - 3 / 4, abs=1e-12)


def test_gold_of_the_kept_responses_rises_with_n(rlhf_stack, small_prompts):
    """gold = proxy = words / 10: the best of 4 is at least as long as any one sample, so on this seed the
    mean gold strictly rises from N = 1 to N = 4; reward and gold are the same number per sample."""
    one = evaluate(eval_config(rlhf_stack, small_prompts, reward_functions=(LENGTH,), gold=LENGTH))["metrics"]
    four = evaluate(
        eval_config(rlhf_stack, small_prompts, reward_functions=(LENGTH,), gold=LENGTH, best_of=4)
    )["metrics"]
    assert four["gold"] > one["gold"]
    assert four["gold"] == pytest.approx(four["reward"]) and one["gold"] == pytest.approx(one["reward"])
    assert "best_of" not in one and four["best_of"] == 4


def test_proxy_is_the_weighted_sum_of_the_rm_and_the_functions(rlhf_stack, small_prompts):
    """reward = 1.0 * RM + 2.0 * length, each component reported under its ppo name (`reward/model`,
    `reward/length_reward`); the kept candidate maximises the sum."""
    _, rm_dir, _ = rlhf_stack
    config = eval_config(
        rlhf_stack, small_prompts, reward_model=rm_dir, reward_functions=(LENGTH,), reward_weights=(1.0, 2.0),
        best_of=2,
    )  # fmt: skip
    result = evaluate(config)
    for s in result["samples"]:
        assert s["reward"] == pytest.approx(s["reward/model"] + 2.0 * s["reward/length_reward"], abs=1e-9)
        assert s["reward"] == max(c["reward"] for c in s["candidates"])
    assert {"reward", "reward/model", "reward/length_reward"} <= set(result["metrics"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"best_of": 0, "gold": GOLD}, "best_of must be > 0, got 0"),
        ({"best_of": 2, "gold": GOLD}, "best_of > 1 selects by a proxy"),
        ({"reward_functions": (LENGTH,), "reward_weights": (1.0, 2.0)}, "reward_weights has 2 values for 1"),
        ({"reward_functions": (LENGTH, LENGTH)}, "names helpers:length_reward twice"),
    ],
)
def test_bad_eval_settings_are_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        EvalConfig(model="m", prompts="p", **fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"best_of": -1}, "best_of must be >= 0"), ({"best_of": 2, "pairs_per_prompt": 2}, "does not apply")],
)
def test_bad_label_settings_are_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        LabelConfig(policy="m", prompts="p", gold=GOLD, out="o", **fields)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`rlhfkit ARGS` in a fresh process that can import tests/helpers.py."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit.cli", *args], capture_output=True, text=True, env=env
    )


def test_cli_eval_best_of_two_writes_the_kept_samples(rlhf_stack, small_prompts, tmp_path):
    sft_dir, rm_dir, _ = rlhf_stack
    out = tmp_path / "ev"
    done = run_cli(
        "eval", "--model", sft_dir, "--prompts", small_prompts, "--reward-model", rm_dir, "--gold", GOLD,
        "--best-of", "2", "--out", str(out), "response_length=8",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "eval.json").read_text())
    assert json.loads(done.stdout) == metrics
    assert metrics["best_of"] == 2 and metrics["kl_best_of_n"] == pytest.approx(0.1931471806, abs=1e-10)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 24 and all(len(s["candidates"]) == 2 for s in samples)
    assert all(s["reward"] == max(c["reward"] for c in s["candidates"]) for s in samples)


def test_cli_eval_best_of_without_a_proxy_is_one_line_status_2(small_prompts, tmp_path):
    out = tmp_path / "never"
    done = run_cli(
        "eval", "--model", "m", "--prompts", small_prompts, "--gold", GOLD, "--best-of", "3",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "rlhfkit eval: error: best_of > 1 selects by a proxy: give --reward-model or --reward-function "
        "(gold only measures)"
    )
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- label


def test_label_best_of_writes_the_golds_favourite_as_sft_rows(rlhf_stack, tmp_path, monkeypatch):
    """Rejection sampling: 6 prompts x 3 samples, 2 prompts per call (3 calls); gold = number of characters,
    recorded per call; each written completion is its group's first highest, and `sft` reads the rows."""
    import rlhfkit.jobs.label as job
    from rlhfkit.data import load_records

    calls: list[tuple[str, str]] = []

    def recording_gold(prompt: str, response: str) -> float:
        calls.append((prompt, response))
        return float(len(response))

    monkeypatch.setattr(job, "load_gold", lambda spec: recording_gold)
    sft_dir, _, _ = rlhf_stack
    prompts = write_jsonl(tmp_path / "p.jsonl", prompt_rows(6, seed=1))
    out = tmp_path / "best.jsonl"
    stats = job.label(
        LabelConfig(
            policy=sft_dir, prompts=prompts, gold="any:thing", out=str(out), best_of=3, batch_size=2,
            response_length=8,
        )
    )  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(calls) == 18 and stats["rows"] == len(rows) == 6
    for i, row in enumerate(rows):
        group = calls[3 * i : 3 * i + 3]
        lengths = [len(r) for _, r in group]
        assert row == {"prompt": group[0][0], "completion": group[lengths.index(max(lengths))][1]}
        assert {p for p, _ in group} == {json.loads(Path(prompts).read_text().splitlines()[i])["prompt"]}
    kept = sum(len(r["completion"]) for r in rows) / 6  # the mean of each group's max
    assert stats["gold_kept"] == pytest.approx(kept) and stats["gold_sampled"] == pytest.approx(
        sum(len(r) for _, r in calls) / 18
    )
    assert stats["gold_kept"] >= stats["gold_sampled"]
    assert len(load_records(str(out), "sft")) == 6  # what `rlhfkit sft --data` reads


def test_reward_functions_get_their_prompts_columns(rlhf_stack, tmp_path, monkeypatch):
    """A function that takes `answer` gets each prompt's own `answer` for every one of its candidates
    (prompts repeated N times keep their rows); all candidates tie, so the first is kept."""
    import rlhfkit.jobs.evaluate as job
    from rlhfkit.tasks.rewards import RewardFunction

    def by_answer(prompt: str, response: str, answer: int) -> float:
        return float(answer)

    monkeypatch.setattr(job, "load_reward_function", lambda spec: RewardFunction(spec, by_answer))
    rows = [{"prompt": f"the {noun} was", "answer": i} for i, noun in enumerate(["movie", "pizza", "phone"])]
    prompts = write_jsonl(tmp_path / "answers.jsonl", rows)
    result = job.evaluate(eval_config(rlhf_stack, prompts, reward_functions=("t:by_answer",), best_of=2))
    assert [s["reward"] for s in result["samples"]] == [0.0, 1.0, 2.0]
    assert [s["candidates"][0]["response"] for s in result["samples"]] == [
        s["response"] for s in result["samples"]
    ]

    missing = write_jsonl(tmp_path / "no_answers.jsonl", [{"prompt": "the movie was"}])
    with pytest.raises(UsageError, match="takes 'answer', which the prompt rows do not have"):
        job.evaluate(
            eval_config(rlhf_stack, missing, reward_functions=("t:by_answer",), out=str(tmp_path / "x"))
        )
    assert not (tmp_path / "x").exists()


def test_a_failing_reward_function_is_a_usage_error_and_nothing_is_written(rlhf_stack, tmp_path, monkeypatch):
    import rlhfkit.jobs.evaluate as job
    from rlhfkit.tasks.rewards import RewardFunction

    def broken(prompt: str, response: str) -> float:
        raise ConnectionError("the verifier is down")

    monkeypatch.setattr(job, "load_reward_function", lambda spec: RewardFunction(spec, broken))
    prompts = write_jsonl(tmp_path / "p.jsonl", prompt_rows(2))
    with pytest.raises(UsageError, match=r"t:broken raised ConnectionError \(the verifier is down\)"):
        job.evaluate(
            eval_config(rlhf_stack, prompts, reward_functions=("t:broken",), out=str(tmp_path / "x"))
        )
    assert not (tmp_path / "x").exists()
