"""`models.packing`: the packed layout of a padded batch (left, right or both paddings) and back, the
token-budget groups, the start-up check that a model keeps packed sequences apart, and packed log-probs and
values equal to the padded path's (fp32, 1e-5), gradients included."""

import pytest
import torch

from rlhfkit.errors import UsageError
from rlhfkit.models import load_causal_lm, load_scalar_model, load_tokenizer
from rlhfkit.models.forward import response_logprobs
from rlhfkit.models.packing import budget_groups, check_packing, packed_token_logprobs, packing
from rlhfkit.models.scalar import position_ids, scalar_values

# three rows of 2, 4 and 3 real tokens in width 5: left, right and both-sided padding
MASKS = {
    "left": torch.tensor([[0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1]]),
    "right": torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
    # a left-padded prompt followed by a right-padded response (PPO's layout)
    "both": torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]),
}


@pytest.mark.parametrize("side", MASKS)
def test_pack_and_unpack_are_a_round_trip(side):
    mask = MASKS[side]
    packed = packing(mask)
    ids = torch.arange(15).view(3, 5) + 100  # (3, 5) every token its own id
    row = packed.pack(ids)  # (1, 9)
    assert row.shape == (1, 9)
    assert row[0].tolist() == ids[mask.bool()].tolist()  # real tokens, row after row, in order
    # positions restart at 0 on each sequence: 0, 1 | 0, 1, 2, 3 | 0, 1, 2
    assert packed.position_ids[0].tolist() == [0, 1, 0, 1, 2, 3, 0, 1, 2]
    assert packed.position_ids[0].tolist() == position_ids(mask)[mask.bool()].tolist()  # the padded path's
    back = packed.unpack(row[..., None].float())  # (3, 5, 1)
    assert torch.equal(back[..., 0], (ids * mask).float())  # values at their tokens, 0 at padding


@pytest.mark.parametrize("side", MASKS)
def test_locate_finds_each_real_token_and_refuses_padding(side):
    mask = MASKS[side]
    packed = packing(mask)
    rows, cols = mask.nonzero(as_tuple=True)
    assert packed.locate(rows, cols).tolist() == list(range(9))
    assert packed.locate(rows.flip(0), cols.flip(0)).tolist() == list(range(9))[::-1]
    pad_row, pad_col = (mask == 0).nonzero(as_tuple=True)
    with pytest.raises(ValueError, match="padding"):
        packed.locate(pad_row[:1], pad_col[:1])


def cost(lengths, group, packed):
    return sum(lengths[i] for i in group) if packed else len(group) * max(lengths[i] for i in group)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_budget_groups_are_consecutive_within_the_budget_and_maximal(packed):
    lengths = [5, 3, 12, 7, 1, 1, 30, 2, 6, 6, 4]
    budget = 14
    groups = budget_groups(lengths, budget, packed)
    assert [i for group in groups for i in group] == list(range(len(lengths)))  # all, in order, once
    for k, group in enumerate(groups):
        assert group == list(range(group[0], group[-1] + 1))
        assert cost(lengths, group, packed) <= budget or len(group) == 1  # 30: an over-long one alone
        if k + 1 < len(groups):  # the next sequence did not fit: groups are filled greedily
            assert cost(lengths, [*group, groups[k + 1][0]], packed) > budget
    assert [6] in groups
    # by hand, packed: 5+3 | 12 | 7+1+1 | 30 | 2+6+6 | 4; padded: 5,3 -> 2 x 5 | 12 | 7,1 -> 14 | 1 | 30 | ...
    expected = [[0, 1], [2], [3, 4, 5], [6], [7, 8, 9], [10]]
    if not packed:
        expected = [[0, 1], [2], [3, 4], [5], [6], [7, 8], [9, 10]]
    assert groups == expected


def test_budget_groups_of_nothing_and_of_a_huge_budget():
    assert budget_groups([], 10, True) == []
    assert budget_groups([3, 4, 5], 1000, False) == [[0, 1, 2]]
    assert budget_groups([3, 4, 5], 1, True) == [[0], [1], [2]]


@pytest.fixture(params=["llama", "gpt2"])
def model_dir(request, tiny_dir, tiny_gpt2_dir):
    return tiny_dir if request.param == "llama" else tiny_gpt2_dir


def test_the_check_passes_models_that_keep_sequences_apart(model_dir):
    tokenizer = load_tokenizer(model_dir)
    check_packing(load_causal_lm(model_dir, tokenizer), "the policy")
    check_packing(load_scalar_model(model_dir, tokenizer), "the reward model")


def test_the_check_refuses_a_model_whose_attention_crosses_sequences(tiny_dir, monkeypatch):
    model = load_causal_lm(tiny_dir, load_tokenizer(tiny_dir))
    body, plain = model.model, model.model.forward

    def leaking(input_ids=None, attention_mask=None, **kwargs):  # a plain causal mask over the packed row
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return plain(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(body, "forward", leaking)
    with pytest.raises(UsageError, match="the policy .*LlamaForCausalLM.* lets packed sequences attend"):
        check_packing(model, "the policy")


def test_the_check_refuses_a_model_without_a_body():
    with pytest.raises(UsageError, match="no transformer body"):
        check_packing(torch.nn.Linear(2, 2), "the policy")


def batch(tokenizer, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 5) ids of real tokens where MASKS[side] is 1, padding elsewhere."""
    mask = MASKS[side]
    ids = torch.randint(5, len(tokenizer), mask.shape, generator=torch.Generator().manual_seed(0))
    return ids.masked_fill(mask == 0, tokenizer.pad_token_id), mask


def gradients(model, loss: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {prefix + n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(one: dict, two: dict) -> None:
    assert one.keys() == two.keys() and one
    for name, grad in one.items():
        torch.testing.assert_close(two[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("side", MASKS)
def test_packed_token_logprobs_equal_the_padded_pass(model_dir, side):
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, tokenizer)
    ids, mask = batch(tokenizer, side)
    scored = mask[:, :-1].bool() & mask[:, 1:].bool()  # every real token after a real one
    weights = torch.rand(scored.shape, generator=torch.Generator().manual_seed(1))  # (3, 4)
    # the padded path by hand: the whole logits, padded positions and the model's own position ids
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits  # (3, 5, V)
    logp = torch.log_softmax(logits[:, :-1] / 0.7, -1).gather(-1, ids[:, 1:, None])[..., 0] * scored
    entropy = -(torch.softmax(logits[:, :-1] / 0.7, -1) * torch.log_softmax(logits[:, :-1] / 0.7, -1)).sum(-1)
    padded = gradients(model, (logp * weights).sum())
    packed_logp, packed_entropy = packed_token_logprobs(model, ids, mask, scored, 0.7, with_entropy=True)
    torch.testing.assert_close(packed_logp, logp.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(packed_entropy, (entropy * scored).detach(), rtol=0, atol=1e-5)
    assert bool((packed_logp[~scored] == 0).all())
    assert_same_gradients(padded, gradients(model, (packed_logp * weights).sum()))


def test_packed_token_logprobs_from_the_heads_input_equal_the_padded_pass(tiny_dir):
    from rlhfkit.models.forward import head_parts

    tokenizer = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, tokenizer)
    ids, mask = batch(tokenizer, "both")
    scored = mask[:, :-1].bool() & mask[:, 1:].bool()
    whole, _ = packed_token_logprobs(model, ids, mask, scored)
    padded = gradients(model, whole.sum())
    chunks, _ = packed_token_logprobs(model, ids, mask, scored, head=head_parts(model))
    torch.testing.assert_close(chunks, whole.detach(), rtol=0, atol=1e-5)
    assert_same_gradients(padded, gradients(model, chunks.sum()))


def test_packed_response_logprobs_and_values_equal_the_padded_pass(model_dir):
    tokenizer = load_tokenizer(model_dir)
    policy, critic = load_causal_lm(model_dir, tokenizer), load_scalar_model(model_dir, tokenizer)
    ids, mask = batch(tokenizer, "both")  # prompt of width 3 (left-padded), response of width 2
    context, response = 3, mask[:, 3:].bool()
    for packed in (False, True):
        logp, _ = response_logprobs(policy, ids, mask, context, 1.0, packed=packed)  # (3, 2)
        values = scalar_values(critic, ids, mask, packed)  # (3, 5)
        grads = gradients(policy, (logp * response).sum(), "policy.")
        grads |= gradients(critic, (values * mask).sum(), "critic.")
        if not packed:
            expected = (logp * response).detach(), (values * mask).detach(), grads
    torch.testing.assert_close(logp * response, expected[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(values * mask, expected[1], rtol=0, atol=1e-5)
    assert_same_gradients(expected[2], grads)
