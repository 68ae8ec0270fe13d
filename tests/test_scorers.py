"""Scorers (`rlhfkit.tasks.scorers`): a score from a function or from a reward-model folder; gold as a
reward-model folder in `label` and `eval`."""

import json
from pathlib import Path

import pytest
import torch

from helpers import chatml, great_reward, prompt_rows, write_jsonl
from rlhfkit.cli import main
from rlhfkit.data.encode import end_of_turn, scored_sequence
from rlhfkit.errors import UsageError
from rlhfkit.models import load_scalar_model, load_tokenizer, sequence_scores
from rlhfkit.tasks.scorers import (
    FunctionScorer,
    ModelScorer,
    callable_scorer,
    load_scorer,
    monitor_means,
    monitor_scores,
    unique_names,
)

PROMPTS = ["The movie was", "My pizza is", "That song sounds"]
RESPONSES = [" great great.", " awful.", " great, not boring"]


def rm_by_hand(rm_dir: str, prompts, responses, finished) -> list[float]:
    """Each example alone (no padding): `scored_sequence` in the RM's tokens, its score at the last token."""
    tok = load_tokenizer(rm_dir)
    model = load_scalar_model(rm_dir, tok).eval()
    scores = []
    with torch.no_grad():
        for prompt, response, done in zip(prompts, responses, finished, strict=True):
            ids = torch.tensor([scored_sequence(prompt, response, tok, finished=done)])
            scores.append(sequence_scores(model, ids, torch.ones_like(ids)).item())
    return scores


@pytest.mark.parametrize("name", ["great_reward", "great_reward_batched", "great_reward_async"])
def test_function_scorer_takes_every_form_reward_functions_take(name):
    scorer = load_scorer(f"helpers:{name}", "gold")
    assert isinstance(scorer, FunctionScorer) and scorer.name == name
    # great_reward counts "great": 2, 0, 1
    assert scorer.score(PROMPTS, RESPONSES) == [2.0, 0.0, 1.0]


def test_model_scorer_equals_scoring_each_example_by_hand(rlhf_stack):
    """Batches of 2 (right-padded, the second batch alone) give each example's score alone; an unfinished
    response is read without the EOS the finished ones end with (so its score differs)."""
    _, rm_dir, _ = rlhf_stack
    scorer = load_scorer(rm_dir, "gold")
    assert isinstance(scorer, ModelScorer) and scorer.name == "rm"
    scorer = ModelScorer(**{**scorer.__dict__, "batch_size": 2})
    finished = [True, True, False]
    got = scorer.score(PROMPTS, RESPONSES, finished=finished)
    assert got == pytest.approx(rm_by_hand(rm_dir, PROMPTS, RESPONSES, finished), abs=1e-5)
    closed = scorer.score(PROMPTS, RESPONSES)  # finished by default
    assert closed[:2] == pytest.approx(got[:2], abs=1e-5) and abs(closed[2] - got[2]) > 1e-4
    assert closed[0] > closed[1]  # the stack's RM likes "great"


def test_model_scorer_renders_a_conversation_with_its_own_template(rlhf_stack):
    _, rm_dir, _ = rlhf_stack
    base = load_scorer(rm_dir, "gold")
    tok = chatml(base.tokenizer)
    scorer = ModelScorer(**{**base.__dict__, "tokenizer": tok, "end": end_of_turn(tok)})
    turns = [{"role": "user", "content": "How was the movie?"}]
    got = scorer.sequences(["ignored when messages are given"], [" great."], [turns], [True])
    # rendered with ChatML and cut after the assistant's <|im_end|>: what `rm` trains on for a conversation
    assert got == [scored_sequence(turns, " great.", tok)]
    assert got[0][-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_load_scorer_names_what_is_wrong(rlhf_stack, tmp_path):
    sft_dir, _, _ = rlhf_stack
    cases = {
        sft_dir: "monitor_models '{}': not a reward-model folder",  # a causal LM has no trained score head
        str(tmp_path): "monitor_models '{}': not a reward-model folder",  # no config.json at all
        "nonsense": "monitor_models 'nonsense': neither a reward-model folder nor module:function",
        "no_such_module:f": "monitor_models 'no_such_module:f': cannot import no_such_module",
        "helpers:missing": "monitor_models 'helpers:missing': helpers has no callable 'missing'",
    }
    for spec, message in cases.items():
        with pytest.raises(UsageError) as info:
            load_scorer(spec, "monitor_models")
        assert str(info.value).startswith(message.format(spec)) and "\n" not in str(info.value)


def test_unique_names_as_reward_components_get_them():
    def named(name, spec):
        return FunctionScorer(name, spec, None)

    # the two `score`s are told apart by their specs; `rm` is alone and keeps its name
    got = unique_names([named("score", "a:score"), named("score", "b:score"), named("rm", "runs/rm")])
    assert [s.name for s in got] == ["a:score", "b:score", "rm"]
    with pytest.raises(UsageError, match="'a:score' is listed twice"):
        unique_names([named("score", "a:score"), named("score", "a:score")])


def test_monitor_scores_and_means():
    monitors = [load_scorer("helpers:great_reward", "m"), load_scorer("helpers:length_reward", "m")]
    values = monitor_scores(monitors, PROMPTS, RESPONSES)
    # great: 2, 0, 1; length = words / 10: 2, 1, 3 words
    assert values == {"monitor/great_reward": [2.0, 0.0, 1.0], "monitor/length_reward": [0.2, 0.1, 0.3]}
    means = monitor_means(values, prefix="monitor/train/")
    assert means == pytest.approx({"monitor/train/great_reward": 1.0, "monitor/train/length_reward": 0.2})


def test_monitor_scores_leave_the_random_streams_as_they_were():
    import random

    def draws(prompt: str, response: str) -> float:
        return torch.rand(()).item() + random.random()

    monitors = [callable_scorer(draws)]
    torch.manual_seed(3)
    random.seed(3)
    expected = (torch.rand(2), random.random())
    torch.manual_seed(3)
    random.seed(3)
    monitor_scores(monitors, PROMPTS, RESPONSES)  # draws from torch and Python inside
    assert torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1]


# --------------------------------------------------------------------------------- gold as an RM folder


@pytest.fixture(scope="module")
def few_prompts(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("gold") / "prompts.jsonl", prompt_rows(6, seed=2))


def test_eval_with_a_reward_model_folder_as_gold(rlhf_stack, few_prompts, tmp_path):
    """`eval --gold RM_FOLDER`: each sample's gold is the RM's score of it by hand (read at EOS when it
    stopped, open when not); `gold` in eval.json their mean."""
    sft_dir, rm_dir, _ = rlhf_stack
    out = tmp_path / "eval"
    args = ["eval", "--model", sft_dir, "--prompts", few_prompts, "--gold", rm_dir, "--out", str(out)]
    assert main([*args, "response_length=8"]) == 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    prompts, responses = [s["prompt"] for s in samples], [s["response"] for s in samples]
    by_hand = rm_by_hand(rm_dir, prompts, responses, [s["stopped"] for s in samples])
    assert [s["gold"] for s in samples] == pytest.approx(by_hand, abs=1e-5)
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["gold"] == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-6)


def test_eval_gold_function_keeps_its_numbers(rlhf_stack, few_prompts):
    """A function gold, by spec or as a Python callable: each sample's gold is the function of its text."""
    from rlhfkit.config import EvalConfig
    from rlhfkit.jobs.evaluate import evaluate

    sft_dir, _, _ = rlhf_stack
    config = EvalConfig(model=sft_dir, prompts=few_prompts, response_length=8, gold="helpers:great_reward")
    by_spec, by_callable = evaluate(config), evaluate(config, gold=great_reward)
    assert by_spec == by_callable
    assert [s["gold"] for s in by_spec["samples"]] == [
        great_reward(s["prompt"], s["response"]) for s in by_spec["samples"]
    ]


def test_label_with_a_reward_model_folder_as_gold(rlhf_stack, few_prompts, tmp_path, monkeypatch):
    """`label --gold RM_FOLDER --tau 0`: the gold scores are the RM's by hand, and each pair's chosen
    response is the one of the two it scores higher."""
    import rlhfkit.jobs.label as job

    seen = []
    scores_of = job.gold_scores

    def recording(gold, done, messages):
        scores = scores_of(gold, done, messages)
        seen.append((done.prompts, done.responses, done.rollout.stopped.tolist(), scores))
        return scores

    monkeypatch.setattr(job, "gold_scores", recording)
    sft_dir, rm_dir, _ = rlhf_stack
    out = tmp_path / "pairs.jsonl"
    args = ["label", "--policy", sft_dir, "--prompts", few_prompts, "--gold", rm_dir, "--out", str(out)]
    assert main([*args, "tau=0", "response_length=8"]) == 0
    gold_of = {}
    for prompts, responses, finished, scores in seen:
        assert scores == pytest.approx(rm_by_hand(rm_dir, prompts, responses, finished), abs=1e-5)
        gold_of |= {(p, r): s for p, r, s in zip(prompts, responses, scores, strict=True)}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows
    for row in rows:
        assert gold_of[row["prompt"], row["chosen"]] > gold_of[row["prompt"], row["rejected"]]


def test_a_bad_gold_is_one_line_and_writes_nothing(rlhf_stack, few_prompts, tmp_path, capsys):
    sft_dir, _, _ = rlhf_stack
    out = tmp_path / "eval"
    args = ["eval", "--model", sft_dir, "--prompts", few_prompts, "--gold", sft_dir, "--out", str(out)]
    assert main(args) == 2
    assert f"gold '{sft_dir}': not a reward-model folder" in capsys.readouterr().err
    assert not Path(out).exists()
