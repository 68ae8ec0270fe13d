"""`rlhfkit ppo` from the command line: a real run with every documented metric, and bad input."""

import json
import subprocess
import sys

import pytest

from helpers import ppo_args
from rlhfkit.cli import main

METRICS = [
    "objective/scores",
    "objective/kl",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/entropy",
    "kl_coef",
    "policy/approx_kl",
    "policy/clipfrac",
    "policy/ratio_mean",
    "loss/policy",
    "loss/value",
    "loss/ptx",
    "val/clipfrac",
    "val/explained_variance",
    "response/length_mean",
    "response/stop_rate",
    "time/rollout",
    "time/score",
    "time/train",
    "episodes_per_s",
]


def test_ppo_command_writes_actor_critic_metrics_and_samples(rlhf_stack, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out = tmp_path / "ppo"
    args = ppo_args(
        rlhf_stack,
        out,
        "--max-steps",
        "2",
        "batch_size=8",
        "mini_batch_size=4",
        "response_length=8",
        "eval_every=1",
        "kl_target=6",
    )
    done = subprocess.run([sys.executable, "-m", "rlhfkit.cli", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        missing = [k for k in METRICS if k not in record]
        assert not missing, missing
    assert records[0]["kl_coef"] == 0.05 and records[1]["kl_coef"] != 0.05  # adaptive beta moved
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2}
    assert all(set(s) == {"step", "prompt", "response", "score"} for s in samples)
    AutoModelForCausalLM.from_pretrained(out / "actor")
    AutoModelForSequenceClassification.from_pretrained(out / "critic")
    assert json.loads((out / "rlhfkit.json").read_text())["finished"]


@pytest.fixture(scope="module")
def other_tokenizer_rm(tmp_path_factory, rlhf_stack):
    """A reward model whose tokenizer differs from the policy's."""
    from helpers import great_rows
    from rlhfkit.models import tiny_llama, train_tokenizer

    folder = tmp_path_factory.mktemp("other")
    tokenizer = train_tokenizer([r["chosen"] for r in great_rows(50)], vocab_size=300)
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


BAD = {
    "mini batch not dividing": (["mini_batch_size=3"], "mini_batch_size (3) must divide batch_size (8)"),
    "response length 0": (["response_length=0"], "response_length must be > 0"),
    "multi-token stop": (["stop_tokens=the movie was"], "stop token 'the movie was' is"),
    "ptx without data": (["ptx_coef=1"], "ptx_coef > 0 needs ptx_data"),
    "too few prompts": (["batch_size=400", "mini_batch_size=8"], "fewer than batch_size=400"),
    "too few with eval prompts": (
        ["batch_size=400", "mini_batch_size=8", "eval_prompts={prompts}"],
        "fewer than batch_size=400",
    ),
    "missing prompts": (["prompts=nowhere/prompts.jsonl"], "nowhere/prompts.jsonl: file does not exist"),
}


@pytest.mark.parametrize("case", BAD)
def test_ppo_bad_input(case, rlhf_stack, tmp_path, capsys):
    extra, message = BAD[case]
    extra = [e.format(prompts=rlhf_stack[2]) for e in extra]
    out = tmp_path / "out"
    code = main(ppo_args(rlhf_stack, out, "batch_size=8", *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_reward_model_with_another_tokenizer_is_refused(rlhf_stack, other_tokenizer_rm, tmp_path, capsys):
    sft_dir, _, prompts = rlhf_stack
    code = main(ppo_args((sft_dir, other_tokenizer_rm, prompts), tmp_path / "out"))
    assert code == 2
    assert "tokenizer does not match the policy's" in capsys.readouterr().err
