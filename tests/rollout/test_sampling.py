import pytest
import torch

from rlhfkit.data import pad
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.models.forward import response_logprobs
from rlhfkit.rollout import SamplingSettings, filter_logits, generate, truncate_after_stop

EOS, PAD = 2, 0


def test_truncate_after_the_first_stop_token():
    a, b, x, y = 11, 12, 13, 14
    tokens = torch.tensor([[a, b, EOS, x, y], [a, b, x, y, a], [EOS, EOS, a, b, x]])
    cut, mask, stopped = truncate_after_stop(tokens, torch.tensor([EOS]), PAD)
    assert cut.tolist() == [[a, b, EOS, PAD, PAD], [a, b, x, y, a], [EOS, PAD, PAD, PAD, PAD]]
    assert mask.long().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert stopped.tolist() == [True, False, True]


def test_extra_stop_tokens():
    cut, mask, _ = truncate_after_stop(torch.tensor([[5, 7, 6, 2]]), torch.tensor([2, 7]), PAD)
    assert cut.tolist() == [[5, 7, PAD, PAD]]


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # nucleus 0.7: 0.5 < 0.7 so the second token is needed; 0.8 >= 0.7 so the third is dropped
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    assert torch.equal(filter_logits(logits), logits)


@pytest.fixture(scope="module")
def policy(rlhf_stack):
    sft_dir = rlhf_stack[0]
    tokenizer = load_tokenizer(sft_dir)
    return load_causal_lm(sft_dir, tokenizer).eval(), tokenizer


def prompts(tokenizer, texts):
    return pad([tokenizer(t)["input_ids"] for t in texts], tokenizer.pad_token_id, side="left")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def position_policy(request):
    """The SFT Llama and a random tiny GPT-2. RoPE is blind to a uniform position shift; GPT-2's learnt
    absolute positions are not (a missing or shifted `position_ids` moves its log-probs by ~0.2), so only the
    GPT-2 case catches one."""
    if request.param == "llama":
        return request.getfixturevalue("policy")
    folder = request.getfixturevalue("tiny_gpt2_dir")
    tokenizer = load_tokenizer(folder)
    return load_causal_lm(folder, tokenizer).eval(), tokenizer


def plain_logprobs(model, ids: list[int], context: int, temperature: float) -> torch.Tensor:
    """(T,) log-probs of `ids[context:]` from one unpadded row through the model's own forward: no mask and
    no `position_ids`, so the model numbers the positions 0..L-1 itself; no rlhfkit position code runs."""
    logits = model(torch.tensor([ids])).logits[0, context - 1 : -1].float() / temperature  # (T, V)
    targets = torch.tensor(ids[context:])  # (T,)
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)  # (T,)


def test_rollout_logprobs_equal_a_full_forward_pass(position_policy):
    model, tok = position_policy
    ids, mask = prompts(tok, ["the movie was", "the pizza", "the hotel was really"])
    generator = torch.Generator().manual_seed(0)
    stop = torch.tensor([tok.eos_token_id])
    rollout = generate(
        model, ids, mask, SamplingSettings(12, temperature=0.7), stop, tok.pad_token_id, generator
    )
    with torch.no_grad():
        full, _ = response_logprobs(model, rollout.input_ids, rollout.attention_mask, ids.shape[1], 0.7)
    valid = rollout.response_mask
    torch.testing.assert_close(rollout.logprobs[valid], full[valid], rtol=0, atol=1e-5)
    assert (rollout.logprobs[~valid] == 0).all()
    # The prompts are 4, 3 and 5 tokens long, so two rows are left-padded. Each row's KV-cached log-probs
    # must equal those of the same tokens unpadded and alone (positions unambiguous there); the batched full
    # pass above shares `position_ids` with the sampler and would agree with it even were both shifted.
    for row in range(3):
        prompt = ids[row][mask[row].bool()].tolist()
        response = rollout.response_ids[row][valid[row]].tolist()
        with torch.no_grad():
            alone = plain_logprobs(model, prompt + response, len(prompt), 0.7)  # (T_row,)
        torch.testing.assert_close(rollout.logprobs[row][valid[row]], alone, rtol=0, atol=1e-5)
    # the response stops at EOS: only padding follows it
    for row in range(3):
        if rollout.stopped[row]:
            last = valid[row].sum() - 1
            assert rollout.response_ids[row, last] == tok.eos_token_id


def test_left_padding_does_not_change_logprobs(position_policy):
    model, tok = position_policy
    prompt = tok("the movie was")["input_ids"]
    response = tok(" great and lovely.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        # expected: the unpadded row through the model's own forward, which numbers positions 0..L-1 itself
        expected = plain_logprobs(model, prompt + response, len(prompt), 1.0)[None]  # (1, T)
    for extra in (0, 3):
        ids = torch.tensor([[tok.pad_token_id] * extra + prompt + response])
        mask = torch.tensor([[0] * extra + [1] * (len(prompt) + len(response))])
        with torch.no_grad():
            logp, _ = response_logprobs(model, ids, mask, extra + len(prompt), 1.0)
        torch.testing.assert_close(logp, expected, rtol=0, atol=1e-5)


def test_generation_ends_early_when_every_row_has_stopped(policy):
    model, tok = policy
    ids, mask = prompts(tok, ["the movie was", "the song was"])
    rollout = generate(
        model,
        ids,
        mask,
        SamplingSettings(50, greedy=True),
        torch.tensor([tok.eos_token_id]),
        tok.pad_token_id,
    )
    assert rollout.stopped.all()  # the SFT model learnt to end its short reviews
    assert rollout.response_ids.shape[1] < 50


def test_sampled_tokens_follow_softmax_of_logits_over_temperature(policy):
    model, tok = policy
    n, temperature = 4000, 0.7
    ids, mask = prompts(tok, ["the movie was"] * n)
    generator = torch.Generator().manual_seed(1)
    rollout = generate(
        model,
        ids,
        mask,
        SamplingSettings(1, temperature),
        torch.tensor([tok.eos_token_id]),
        tok.pad_token_id,
        generator,
    )
    with torch.no_grad():
        probs = torch.softmax(model(ids[:1], attention_mask=mask[:1]).logits[0, -1] / temperature, -1)
    counts = torch.bincount(rollout.response_ids[:, 0], minlength=probs.shape[0]).float()
    # every token the model gives >= 5 % gets its share within 4 standard errors
    for token in torch.nonzero(probs > 0.05).flatten():
        p = probs[token].item()
        assert abs(counts[token].item() / n - p) < 4 * (p * (1 - p) / n) ** 0.5


def test_inverse_cdf_by_hand():
    """probs [0.5, 0, 0.3, 0.2] have the cumulative [0.5, 0.5, 0.8, 1.0]: a uniform u picks the first token
    whose cumulative probability exceeds u, so token 1 (probability 0) is never drawn."""
    from rlhfkit.rollout.sampling import inverse_cdf

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2]]).expand(6, 4)
    uniform = torch.tensor([0.0, 0.49, 0.5, 0.79, 0.8, 0.9999999])
    assert inverse_cdf(probs, uniform).tolist() == [0, 0, 2, 2, 3, 3]
    # a filtered distribution (top-k = 1 leaves one token): every uniform draws it
    assert inverse_cdf(
        torch.tensor([[0.0, 1.0, 0.0]]).expand(3, 3), torch.tensor([0.0, 0.5, 0.99])
    ).tolist() == [
        1,
        1,
        1,
    ]
