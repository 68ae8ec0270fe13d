"""Token-budget micro-batches on two gloo processes: with `max_tokens_per_micro_batch` the two processes'
shares of a batch fall into different numbers of micro-batches; they agree on the most and the shorter one
runs stand-in passes that weigh nothing, so the run equals one process's (padding-free passes)."""

import random

from test_multiprocess import assert_close_records, assert_same_weights, launch, records

from helpers import write_jsonl

WORDS = ["great", "lovely", "awful", "boring", "and", "the", "movie", "was", "so", "very"]
BUDGET = 40  # tokens a packed micro-batch


def varied_rows(n: int, seed: int = 0) -> list[dict]:
    """Completions of 1 to 14 words: the processes' shares of a batch differ in tokens."""
    rng = random.Random(seed)
    return [
        {
            "prompt": " ".join(rng.choices(WORDS, k=rng.randint(1, 3))),
            "completion": " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 14))) + ".",
        }
        for _ in range(n)
    ]


def micro_batch_counts(model: str, data: str, batch_size: int, steps: int) -> list[tuple[int, int]]:
    """Each step's micro-batch count on process 0 and on process 1 (each takes every other example)."""
    from rlhfkit.algorithms.supervised import TokenBudget
    from rlhfkit.data import encode_sft, load_records
    from rlhfkit.data.order import batch_indices
    from rlhfkit.models import load_tokenizer

    train = encode_sft(load_records(data, "sft"), load_tokenizer(model), 512, "left", data)
    budget = TokenBudget(BUDGET, True, lambda e: [len(e.input_ids)])
    counts = []
    for step in range(steps):
        _, indices = batch_indices(len(train), batch_size, 0, step, drop_last=False)
        batch = [train[i] for i in indices]
        counts.append((len(budget.groups(batch[0::2])), len(budget.groups(batch[1::2]))))
    return counts


def test_sft_under_a_token_budget_on_two_processes_matches_one(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", varied_rows(64))
    counts = micro_batch_counts(tiny_dir, data, 16, 3)
    assert any(a != b for a, b in counts), counts  # the processes run stand-ins on some step
    args = ["--model", tiny_dir, "--data", data, "max_steps=3", "batch_size=16", "eval_fraction=0",
            "padding_free=true", f"max_tokens_per_micro_batch={BUDGET}", "bf16=false",
            "optim.lr=3e-3"]  # fmt: skip
    launch(["sft", "--out", str(tmp_path / "one"), *args], processes=1)
    launch(["sft", "--out", str(tmp_path / "two"), *args])
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert_close_records(one, two, rel=1e-5, keys=["loss", "grad_norm", "tokens"])
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_offline_dpo_under_a_token_budget_on_two_processes_matches_one(rlhf_stack, tmp_path):
    """The reference's pass (each process scores every other group, the sums shared), the training passes
    (pairs kept whole, stand-ins where a process has fewer) and the held-out pass, packed."""
    from helpers import great_rows

    data = write_jsonl(tmp_path / "pairs.jsonl", great_rows(48, seed=4))
    args = ["--model", rlhf_stack[0], "--data", data, "max_steps=3", "batch_size=16", "eval_every=3",
            "padding_free=true", "max_tokens_per_micro_batch=60", "bf16=false", "optim.lr=1e-3"]  # fmt: skip
    launch(["dpo", "--out", str(tmp_path / "one"), *args], processes=1)
    launch(["dpo", "--out", str(tmp_path / "two"), *args])
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    keys = ["loss", "rewards/chosen", "rewards/margins", "logps/chosen", "grad_norm"]
    assert_close_records(one, two, rel=1e-5, keys=keys)
    held_out = ["eval/loss", "eval/rewards/margins", "eval/logps/chosen"]
    assert_close_records(one[-1:], two[-1:], rel=1e-5, keys=held_out)
