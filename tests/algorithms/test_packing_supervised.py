"""Padding-free passes and token-budget micro-batches in `sft`, `rm` and `dpo`: the packed losses and their
gradients equal the padded ones (fp32, 1e-5); runs whose micro-batches are cut by a token budget, packed or
not, log the metrics of fixed `grad_accum` runs; a model whose attention mixes packed sequences is refused in
one line, status 2, before anything is written."""

import json
import random

import pytest
import torch

from helpers import write_jsonl
from rlhfkit.algorithms.dpo import dpo
from rlhfkit.algorithms.dpo.loss import response_logprobs_sum
from rlhfkit.algorithms.reward import pair_loss, train_reward_model
from rlhfkit.algorithms.sft import completion_nll, sft
from rlhfkit.algorithms.supervised import TokenBudget, forward_groups, micro_batches
from rlhfkit.config import DPOConfig, OptimConfig, RewardConfig, SFTConfig
from rlhfkit.data import PairExample, SFTExample
from rlhfkit.models import forward, load_causal_lm, load_scalar_model, load_tokenizer
from rlhfkit.models.scalar import SequenceScores
from rlhfkit.runtime.metrics import read_metrics

CPU = torch.device("cpu")
WORDS = ["great", "lovely", "awful", "boring", "and", "the", "movie", "was", "so", "very"]


def varied_sft_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompts of 1-4 words and completions of 1-12: lengths spread as RLHF responses are."""
    rng = random.Random(seed)
    return [
        {
            "prompt": " ".join(rng.choices(WORDS, k=rng.randint(1, 4))),
            "completion": " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 12))) + ".",
        }
        for _ in range(n)
    ]


def varied_pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Chosen says `great` (a feature to learn); chosen and rejected of different lengths."""
    rng = random.Random(seed)
    return [
        {
            "prompt": " ".join(rng.choices(WORDS, k=rng.randint(1, 4))),
            "chosen": " great " + " ".join(rng.choices(WORDS[2:], k=rng.randint(0, 8))) + ".",
            "rejected": " " + " ".join(rng.choices(WORDS[2:], k=rng.randint(1, 10))) + ".",
        }
        for _ in range(n)
    ]


@pytest.fixture(params=["llama", "gpt2"])
def model_dir(request, tiny_dir, tiny_gpt2_dir):
    return tiny_dir if request.param == "llama" else tiny_gpt2_dir


def sft_examples(tokenizer) -> list[SFTExample]:
    examples = []
    for row in varied_sft_rows(6, seed=1):
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        examples.append(SFTExample(prompt + completion, [-100] * len(prompt) + completion))
    return examples


def pair_examples(tokenizer) -> list[PairExample]:
    pairs = []
    for row in varied_pair_rows(5, seed=2):
        prompt = tokenizer(row["prompt"])["input_ids"]
        chosen, rejected = (
            tokenizer(row[k], add_special_tokens=False)["input_ids"] for k in ("chosen", "rejected")
        )
        pairs.append(PairExample(prompt + chosen, prompt + rejected, prompt_length=len(prompt)))
    return pairs


def value_and_gradients(model: torch.nn.Module, loss_of) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`loss_of()` and the gradient of every parameter that gets one."""
    model.zero_grad()
    loss = loss_of()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(padded, packed) -> None:
    (loss, grads), (packed_loss, packed_grads) = padded, packed
    torch.testing.assert_close(packed_loss, loss, rtol=0, atol=1e-5)
    assert grads.keys() == packed_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------------ packed == padded, with gradients


def test_sft_nll_packed_equals_padded(model_dir):
    tokenizer = load_tokenizer(model_dir)
    model, examples = load_causal_lm(model_dir, tokenizer), sft_examples(tokenizer)
    lengths = {len(e.input_ids) for e in examples}
    assert len(lengths) > 2  # right padding of several widths
    pad_id = tokenizer.pad_token_id
    padded = value_and_gradients(model, lambda: completion_nll(model, examples, pad_id, CPU)[0])
    packed = value_and_gradients(model, lambda: completion_nll(model, examples, pad_id, CPU, packed=True)[0])
    assert_same(padded, packed)
    assert (
        completion_nll(model, examples, pad_id, CPU, packed=True)[1]
        == completion_nll(model, examples, pad_id, CPU)[1]
    )


def test_rm_pair_loss_packed_equals_padded(model_dir):
    tokenizer = load_tokenizer(model_dir)
    scorer = SequenceScores(load_scalar_model(model_dir, tokenizer))
    pairs, pad_id = pair_examples(tokenizer), tokenizer.pad_token_id
    padded = value_and_gradients(scorer, lambda: pair_loss(scorer, pairs, pad_id, CPU)[0])
    packed = value_and_gradients(scorer, lambda: pair_loss(scorer, pairs, pad_id, CPU, packed=True)[0])
    assert_same(padded, packed)
    margins = pair_loss(scorer, pairs, pad_id, CPU)[2], pair_loss(scorer, pairs, pad_id, CPU, packed=True)[2]
    torch.testing.assert_close(margins[1], margins[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunked", [False, True], ids=["logits", "chunked-head"])
def test_dpo_response_sums_packed_equal_padded(model_dir, chunked, monkeypatch):
    if chunked:  # the head applied to the body's states by chunks (`head=`), as at a large vocabulary
        monkeypatch.setattr(forward, "CHUNKED_VOCAB", 100)
    tokenizer = load_tokenizer(model_dir)
    model, pairs = load_causal_lm(model_dir, tokenizer), pair_examples(tokenizer)
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    starts, pad_id = [p.prompt_length for p in pairs] * 2, tokenizer.pad_token_id
    weights = torch.linspace(0.5, 1.5, len(sequences))  # each sum's own gradient weight

    def loss(packed: bool) -> torch.Tensor:
        sums, _ = response_logprobs_sum(model, sequences, starts, pad_id, CPU, packed)
        return (sums * weights).sum()

    assert_same(
        value_and_gradients(model, lambda: loss(False)), value_and_gradients(model, lambda: loss(True))
    )
    counts = [response_logprobs_sum(model, sequences, starts, pad_id, CPU, p)[1] for p in (False, True)]
    assert torch.equal(*counts)


# ------------------------------------------------------------------------ token-budget micro-batches


def test_micro_batches_under_a_budget_keep_the_order_and_the_limit():
    examples = [[0] * n for n in (3, 5, 2, 9, 1, 1, 4)]
    packed = TokenBudget(8, True, lambda e: [len(e)])
    parts = micro_batches(examples, grad_accum=1, budget=packed)
    # sums 3+5 | 2 | 9 (over-long: alone) | 1+1+4
    assert [[len(e) for e in part] for part, _ in parts] == [[3, 5], [2], [9], [1, 1, 4]]
    assert [w for _, w in parts] == [1.0] * 4
    padded = TokenBudget(8, False, lambda e: [len(e)])
    # rows x longest: 3,5 -> 2 x 5 = 10 > 8, so 3 | 5 | 2 | 9 | 1,1,4 -> 3 x 4 = 12 > 8: 1,1 | 4
    assert [[len(e) for e in g] for g in forward_groups(examples, 99, padded)] == [
        [3],
        [5],
        [2],
        [9],
        [1, 1],
        [4],
    ]
    assert forward_groups(examples, 3) == [examples[:3], examples[3:6], examples[6:]]


def test_a_pair_budget_counts_both_sequences_and_keeps_them_together():
    pairs = [([0] * 3, [0] * 6), ([0] * 4, [0] * 1), ([0] * 2, [0] * 2)]
    packed = TokenBudget(10, True, lambda p: [len(p[0]), len(p[1])])
    assert [len(g) for g in packed.groups(pairs)] == [1, 2]  # 9 | 5 + 4
    padded = TokenBudget(10, False, lambda p: [len(p[0]), len(p[1])])
    assert [padded.cost(p) for p in pairs] == [12, 8, 4]  # 2 rows x the longer
    assert [len(g) for g in padded.groups(pairs)] == [1, 1, 1]  # 12 alone | 2 x 2 x 4 = 16 > 10


def run_metrics(out, keys):
    return [{k: r[k] for k in keys if k in r} for r in read_metrics(out / "metrics.jsonl")]


def assert_close_runs(one, two, rel=1e-5, abs=1e-7):
    assert len(one) == len(two)
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert b[key] == pytest.approx(value, rel=rel, abs=abs), (key, value, b[key])


SFT_KEYS = ("loss", "tokens", "grad_norm", "eval/loss")


@pytest.fixture
def wiring(monkeypatch):
    """Counts of the packed passes and the budget groupings a run makes: the equalities below hold by design
    whether or not a command packs, so each run also shows that it took the path it was asked for."""
    import rlhfkit.algorithms.supervised as supervised
    import rlhfkit.models.packing as packing

    counts = {"packed": 0, "budget": 0}
    packed_call, budget_groups = packing.packed_call, supervised.budget_groups

    def counted_call(*args, **kwargs):
        counts["packed"] += 1
        return packed_call(*args, **kwargs)

    def counted_groups(*args, **kwargs):
        counts["budget"] += 1
        return budget_groups(*args, **kwargs)

    monkeypatch.setattr(packing, "packed_call", counted_call)
    monkeypatch.setattr(supervised, "budget_groups", counted_groups)

    def taken() -> tuple[bool, bool]:
        """(packed, budgeted) since the last call."""
        seen = (counts["packed"] > 0, counts["budget"] > 0)
        counts.update(packed=0, budget=0)
        return seen

    return taken


def test_sft_with_a_token_budget_logs_the_metrics_of_fixed_micro_batches(tiny_dir, tmp_path, wiring):
    data = write_jsonl(tmp_path / "sft.jsonl", varied_sft_rows(48))
    common = dict(model=tiny_dir, data=data, max_steps=3, batch_size=16, eval_every=3, eval_fraction=0.25,
                  bf16=False, optim=OptimConfig(lr=3e-3))  # fmt: skip
    fixed = sft(SFTConfig(out=str(tmp_path / "fixed"), grad_accum=2, **common))
    assert wiring() == (False, False)
    runs = [sft(SFTConfig(out=str(tmp_path / "budget"), max_tokens_per_micro_batch=120, **common))]
    assert wiring() == (False, True)
    packed = SFTConfig(
        out=str(tmp_path / "packed"), padding_free=True, max_tokens_per_micro_batch=60, **common
    )
    runs.append(sft(packed))
    assert wiring() == (True, True)
    for out in runs:
        assert_close_runs(run_metrics(fixed, SFT_KEYS), run_metrics(out, SFT_KEYS))
    assert "eval/loss" in run_metrics(fixed, SFT_KEYS)[-1]


def test_sft_with_lora_packed_logs_the_metrics_of_padded_passes(tiny_dir, tmp_path):
    """The adapters' layers sit inside the body that runs packed; the check runs on the adapted model."""
    from rlhfkit.config import LoraConfig

    data = write_jsonl(tmp_path / "sft.jsonl", varied_sft_rows(32))
    common = dict(model=tiny_dir, data=data, max_steps=2, batch_size=16, eval_every=2, eval_fraction=0.25,
                  bf16=False, lora=LoraConfig(r=4), optim=OptimConfig(lr=1e-2))  # fmt: skip
    fixed = sft(SFTConfig(out=str(tmp_path / "fixed"), **common))
    packed = sft(
        SFTConfig(out=str(tmp_path / "packed"), padding_free=True, max_tokens_per_micro_batch=50, **common)
    )
    assert_close_runs(run_metrics(fixed, SFT_KEYS), run_metrics(packed, SFT_KEYS))


def test_rm_with_a_token_budget_logs_the_metrics_of_fixed_micro_batches(tiny_dir, tmp_path, wiring):
    data = write_jsonl(tmp_path / "pairs.jsonl", varied_pair_rows(48))
    common = dict(model=tiny_dir, data=data, max_steps=3, batch_size=16, eval_every=3, eval_fraction=0.25,
                  bf16=False, optim=OptimConfig(lr=1e-3), stats_samples=20)  # fmt: skip
    keys = ("loss", "accuracy", "margin", "grad_norm", "eval/accuracy", "eval/margin")
    fixed = train_reward_model(RewardConfig(out=str(tmp_path / "fixed"), grad_accum=4, **common))
    assert wiring() == (False, False)
    packed = train_reward_model(
        RewardConfig(out=str(tmp_path / "packed"), padding_free=True, max_tokens_per_micro_batch=50, **common)
    )
    assert wiring() == (True, True)
    assert_close_runs(run_metrics(fixed, keys), run_metrics(packed, keys))
    stats = [json.loads((out / "rlhfkit.json").read_text())["reward_stats"] for out in (fixed, packed)]
    assert stats[1] == pytest.approx(stats[0], rel=1e-5)


DPO_KEYS = ("loss", "rewards/chosen", "rewards/margins", "logps/rejected", "grad_norm", "eval/loss",
            "eval/rewards/margins")  # fmt: skip


def test_dpo_with_a_token_budget_logs_the_metrics_of_fixed_micro_batches(rlhf_stack, tmp_path, wiring):
    data = write_jsonl(tmp_path / "pairs.jsonl", varied_pair_rows(48))
    common = dict(model=rlhf_stack[0], data=data, max_steps=3, batch_size=16, eval_every=3,
                  eval_fraction=0.25, bf16=False, optim=OptimConfig(lr=1e-3))  # fmt: skip
    fixed = dpo(DPOConfig(out=str(tmp_path / "fixed"), grad_accum=4, **common))
    assert wiring() == (False, False)
    packed = dpo(
        DPOConfig(out=str(tmp_path / "packed"), padding_free=True, max_tokens_per_micro_batch=50, **common)
    )
    assert wiring() == (True, True)
    first = run_metrics(fixed, DPO_KEYS)
    assert first[0]["loss"] == pytest.approx(0.6931472, abs=1e-5)  # the policy starts at the reference
    # before the policy moves its rewards are beta x (differences of fp32 sums of ~50 log-probs): ~1e-7 noise
    assert_close_runs(first, run_metrics(packed, DPO_KEYS), abs=2e-6)


# ------------------------------------------------------------------------ refusal of a leaking model


@pytest.fixture
def leaking_llama(monkeypatch):
    """Every Llama body attends over the whole packed row, across sequences (as a model whose attention
    ignores position ids would)."""
    from transformers.models.llama import modeling_llama

    plain = modeling_llama.LlamaModel.forward

    def leaking(self, input_ids=None, attention_mask=None, **kwargs):
        if attention_mask is None and input_ids is not None:
            attention_mask = torch.ones_like(input_ids)
        return plain(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", leaking)


@pytest.mark.parametrize("command", ["sft", "rm", "dpo", "online-dpo"])
def test_a_leaking_model_is_refused_in_one_line_before_anything_is_written(
    command, tiny_dir, tmp_path, leaking_llama, capsys
):
    from helpers import prompt_rows
    from rlhfkit.cli import main

    out = tmp_path / "out"
    if command == "online-dpo":
        data = ["--prompts", write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(8))]
        args = ["dpo", *data, "reward_functions=helpers:great_reward", "samples_per_prompt=2"]
    else:
        rows = varied_sft_rows(8) if command == "sft" else varied_pair_rows(8)
        args = [command, "--data", write_jsonl(tmp_path / "data.jsonl", rows)]
    assert main([*args, "--model", tiny_dir, "--out", str(out), "padding_free=true", "bf16=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "lets packed sequences attend to each other" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_online_dpo_packed_under_a_budget_logs_the_metrics_of_padded_passes(rlhf_stack, tmp_path):
    """The training pass (here) and the no-grad passes over the samples (`ppo`'s experience) packed, pairs
    of rows under a token budget: the metrics of padded passes in fixed micro-batches."""
    sft_dir, _, prompts = rlhf_stack
    common = dict(model=sft_dir, prompts=prompts, reward_functions=("helpers:great_reward",), max_steps=3,
                  batch_size=16, samples_per_prompt=4, eval_every=3, response_length=8, bf16=False,
                  optim=OptimConfig(lr=1e-3, warmup_ratio=0))  # fmt: skip
    keys = ("loss", "pairs", "rewards/chosen", "rewards/margins", "logps/chosen", "grad_norm",
            "objective/scores", "objective/kl", "eval/score")  # fmt: skip
    fixed = dpo(DPOConfig(out=str(tmp_path / "fixed"), grad_accum=2, **common))
    packed = dpo(
        DPOConfig(out=str(tmp_path / "packed"), padding_free=True, max_tokens_per_micro_batch=40, **common)
    )
    first = run_metrics(fixed, keys)
    assert first[0]["pairs"] > 0 and "eval/score" in first[-1]
    assert_close_runs(first, run_metrics(packed, keys), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_bad_token_budget_is_one_line_and_status_2(value, tiny_dir, tmp_path, capsys):
    from rlhfkit.cli import main

    data, out = write_jsonl(tmp_path / "data.jsonl", varied_sft_rows(4)), tmp_path / "out"
    args = [
        "sft",
        "--model",
        tiny_dir,
        "--data",
        data,
        "--out",
        str(out),
        f"max_tokens_per_micro_batch={value}",
    ]
    assert main([*args, "bf16=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "max_tokens_per_micro_batch" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_a_leaking_reference_folder_is_refused_before_anything_is_written(
    tiny_dir, tiny_gpt2_dir, tmp_path, leaking_llama, capsys
):
    from rlhfkit.cli import main

    data, out = write_jsonl(tmp_path / "pairs.jsonl", varied_pair_rows(8)), tmp_path / "out"
    args = ["dpo", "--model", tiny_gpt2_dir, "--data", data, "--out", str(out), f"reference={tiny_dir}"]
    assert main([*args, "padding_free=true", "bf16=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"padding_free: {tiny_dir} (LlamaForCausalLM) lets packed" in err and len(err.splitlines()) == 1, (
        err
    )
    assert not out.exists()
