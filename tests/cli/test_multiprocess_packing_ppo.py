"""Padding-free PPO under a token budget on two gloo processes: the processes' rows need different numbers of
passes, so the one with fewer runs stand-ins that count for nothing (DDP syncs every backward, FSDP's forwards
are collective); the metrics and samples are those of one process with the same global batch."""

import random

from test_multiprocess import assert_close_records, fsdp, launch, records
from test_multiprocess_rewards import one_and_two_processes_agree

from helpers import NOUNS, ppo_args, sentiment_rows, write_jsonl

BUDGET = 32  # real tokens per pass: 1 to 3 episodes of 7 to 23 tokens
PACKED = ["padding_free=true", f"max_tokens_per_micro_batch={BUDGET}", "bf16=false", "batch_size=8",
          "mini_batch_size=4", "ppo_epochs=2", "response_length=10", "eval_every=2", "eval_holdout=4",
          "ptx_coef=0.5", "--max-steps", "2"]  # fmt: skip


def varied_prompt_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompts of 3 to 18 words (`the NOUN was` after 0 to 3 `the NOUN was great and`): episodes of very
    different lengths."""
    rng = random.Random(seed)
    return [
        {
            "prompt": "".join(f"the {rng.choice(NOUNS)} was great and " for _ in range(rng.randrange(4)))
            + f"the {rng.choice(NOUNS)} was"
        }
        for _ in range(n)
    ]


def test_the_processes_need_different_numbers_of_training_passes(rlhf_stack, tmp_path, monkeypatch):
    """The runs below on one process, each minibatch's two halves (each process's rows) split under the
    budget: some minibatch gives the processes different numbers of passes, so the runs go through the
    stand-ins (sampling does not depend on the processes)."""
    from rlhfkit.algorithms.ppo import update
    from rlhfkit.cli import main

    sft, rm, _ = rlhf_stack
    stack = (sft, rm, write_jsonl(tmp_path / "prompts.jsonl", varied_prompt_rows(64)))
    ptx = write_jsonl(tmp_path / "ptx.jsonl", sentiment_rows(32))
    counts, step = [], update.minibatch_step

    def counted(opt, exp, rows, kl_coef, config, guard):
        counts.append([len(update.micro_batch_rows(exp, half, config)) for half in rows.chunk(2)])
        return step(opt, exp, rows, kl_coef, config, guard)

    monkeypatch.setattr(update, "minibatch_step", counted)
    assert main(ppo_args(stack, tmp_path / "count", f"ptx_data={ptx}", *PACKED)) == 0
    assert counts and any(a != b for a, b in counts), counts


def test_padding_free_ppo_with_a_token_budget_on_two_processes_matches_one(rlhf_stack, tmp_path):
    sft, rm, _ = rlhf_stack
    stack = (sft, rm, write_jsonl(tmp_path / "prompts.jsonl", varied_prompt_rows(64)))
    ptx = write_jsonl(tmp_path / "ptx.jsonl", sentiment_rows(32))
    one_and_two_processes_agree(lambda out: ppo_args(stack, out, f"ptx_data={ptx}", *PACKED), tmp_path)


def test_padding_free_ppo_with_a_token_budget_under_fsdp_matches_one_process(rlhf_stack, tmp_path):
    sft, rm, _ = rlhf_stack
    stack = (sft, rm, write_jsonl(tmp_path / "prompts.jsonl", varied_prompt_rows(64)))
    ptx = write_jsonl(tmp_path / "ptx.jsonl", sentiment_rows(32))
    launch(ppo_args(stack, tmp_path / "one", f"ptx_data={ptx}", *PACKED), processes=1)
    launch(ppo_args(stack, tmp_path / "two", f"ptx_data={ptx}", *PACKED), engine=fsdp)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert_close_records(one[:1], two[:1], rel=1e-5)
    assert_close_records(one[1:], two[1:], rel=1e-3)
