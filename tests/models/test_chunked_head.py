"""Response log-probs from the LM head's input by chunks (`chunked=True`) against the whole logits: a
Llama, a GPT-2 whose head is tied to its embedding, LoRA adapters; values, entropies and gradients."""

import pytest
import torch

import rlhfkit.models.forward as forward
from rlhfkit.data import pad
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.models.forward import head_parts, response_logprobs


def batch(tokenizer):
    prompts = [tokenizer("the film was")["input_ids"], tokenizer("a")["input_ids"]]
    responses = [
        tokenizer(" great and fine", add_special_tokens=False)["input_ids"],
        [tokenizer.eos_token_id],
    ]
    left, left_mask = pad(prompts, tokenizer.pad_token_id, "left")  # (2, P)
    right, right_mask = pad(responses, tokenizer.pad_token_id, "right")  # (2, T)
    return (
        torch.cat([left, right], 1),
        torch.cat([left_mask, right_mask.long()], 1),
        left.shape[1],
        right_mask,
    )


def compare(model, tokenizer):
    ids, mask, context, valid = batch(tokenizer)
    results = {}
    for chunked in (False, True):
        model.zero_grad()
        logp, entropy = response_logprobs(model, ids, mask, context, 0.7, with_entropy=True, chunked=chunked)
        (logp * valid).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[chunked] = (logp.detach(), entropy, grads)
    (plain, plain_entropy, plain_grads), (chunks, chunk_entropy, chunk_grads) = results[False], results[True]
    torch.testing.assert_close(chunks[valid], plain[valid], rtol=0, atol=1e-5)
    torch.testing.assert_close(chunk_entropy[valid], plain_entropy[valid], rtol=0, atol=1e-5)
    assert plain_grads and set(chunk_grads) == set(plain_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunk_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_a_llama_gives_the_whole_logits_log_probs_and_gradients(tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    compare(load_causal_lm(tiny_dir, tokenizer), tokenizer)


def test_a_tied_head_sums_both_gradients_into_the_embedding(tiny_gpt2_dir):
    tokenizer = load_tokenizer(tiny_gpt2_dir)
    model = load_causal_lm(tiny_gpt2_dir, tokenizer)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    compare(model, tokenizer)


def test_lora_adapters_get_the_same_gradients(tiny_dir):
    from peft import LoraConfig, get_peft_model

    tokenizer = load_tokenizer(tiny_dir)
    model = get_peft_model(
        load_causal_lm(tiny_dir, tokenizer),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    for name, p in model.named_parameters():  # adapters away from 0, so their gradients are not all 0
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    compare(model, tokenizer)


def test_a_head_that_is_not_plain_keeps_the_whole_logits(tiny_dir):
    from peft import LoraConfig, get_peft_model

    tokenizer = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, tokenizer)
    assert head_parts(model) is not None
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head"]))
    assert head_parts(adapted) is None  # LoRA on the head: peft wraps it
    capped = load_causal_lm(tiny_dir, tokenizer)
    capped.config.final_logit_softcapping = 30.0
    assert head_parts(capped) is None


def test_the_default_chunks_from_a_large_vocabulary_on(tiny_dir, monkeypatch):
    tokenizer = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, tokenizer)
    ids, mask, context, _ = batch(tokenizer)
    calls = []
    monkeypatch.setattr(forward, "logprobs_from_hidden", lambda *a, **k: calls.append(1) or torch.zeros(2, 4))
    response_logprobs(model, ids, mask, context, 1.0)
    assert not calls  # a 400-entry vocabulary: the whole logits
    monkeypatch.setattr(forward, "CHUNKED_VOCAB", 100)
    response_logprobs(model, ids, mask, context, 1.0)
    assert calls == [1]
    response_logprobs(model, ids, mask, context, 1.0, chunked=False)  # asked for the whole logits
    assert calls == [1]


def test_dpo_sums_from_the_heads_input_equal_the_whole_logits(tiny_dir, monkeypatch):
    from rlhfkit.algorithms.dpo.loss import response_logprobs_sum

    tokenizer = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, tokenizer)
    sequences = [tokenizer("the film was great")["input_ids"], tokenizer("a bad one")["input_ids"]]
    plain, counts = response_logprobs_sum(
        model, sequences, [2, 1], tokenizer.pad_token_id, torch.device("cpu")
    )
    monkeypatch.setattr(forward, "CHUNKED_VOCAB", 100)  # the default path at a large vocabulary
    chunks, same = response_logprobs_sum(
        model, sequences, [2, 1], tokenizer.pad_token_id, torch.device("cpu")
    )
    torch.testing.assert_close(chunks, plain, rtol=0, atol=1e-5)
    assert torch.equal(counts, same)


def test_a_ppo_iteration_by_chunks_matches_the_whole_logits(rlhf_stack, tmp_path, monkeypatch):
    from helpers import ppo_config
    from rlhfkit.algorithms.ppo import ppo
    from rlhfkit.runtime.metrics import read_metrics

    records = []
    for name, vocab in (("whole", forward.CHUNKED_VOCAB), ("chunks", 100)):
        monkeypatch.setattr(forward, "CHUNKED_VOCAB", vocab)
        out = ppo(ppo_config(rlhf_stack, tmp_path / name, max_steps=2, response_length=6))
        records.append(read_metrics(out / "metrics.jsonl"))
    for whole, chunks in zip(*records, strict=True):
        for key in ("objective/kl", "objective/scores", "objective/entropy", "loss/policy", "loss/value"):
            assert chunks[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-5), key
