"""The rollout engine interface: unpadded prompts in, a Rollout out; padding happens inside; the in-process
sampler reads the trained weights directly."""

import torch

from rlhfkit.data import pad
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.rollout import LocalSampler, SamplingSettings, generate, stop_token_ids

SETTINGS = SamplingSettings(max_new_tokens=6, temperature=0.7)


def sampler(tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, tokenizer).eval()
    return LocalSampler(model, tokenizer, stop_token_ids(tokenizer)), model, tokenizer


def test_the_engine_pads_on_the_left_and_samples_like_the_kernel(tiny_dir):
    engine, model, tokenizer = sampler(tiny_dir)
    prompts = [tokenizer("the movie was")["input_ids"], tokenizer("the pizza")["input_ids"]]
    assert len(prompts[0]) != len(prompts[1])  # the engine has padding to do
    rollout = engine.generate(prompts, SETTINGS, torch.Generator().manual_seed(3))
    ids, mask = pad(prompts, tokenizer.pad_token_id, side="left")  # (2, P)
    stop = torch.tensor([tokenizer.eos_token_id])
    direct = generate(
        model, ids, mask, SETTINGS, stop, tokenizer.pad_token_id, torch.Generator().manual_seed(3)
    )
    assert torch.equal(rollout.prompt_ids, ids) and torch.equal(rollout.prompt_mask, mask)
    assert torch.equal(rollout.response_ids, direct.response_ids)
    assert rollout.prompt_mask[1, 0] == 0  # the shorter prompt is padded on the left


def test_the_stop_tokens_add_the_end_of_turn_only_when_it_is_not_eos(tiny_dir):
    """A ChatML conversation ends its turn at `<|im_end|>` (where `rm` read it): PPO, `label` and `eval` stop
    there too. A template closing turns with EOS (the tiny one), or none, changes nothing."""
    import copy

    from helpers import chatml

    tokenizer = load_tokenizer(tiny_dir)
    eos = tokenizer.eos_token_id
    chat = chatml(tokenizer)
    im_end = chat.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(chat).tolist() == sorted([eos, im_end])
    assert stop_token_ids(tokenizer).tolist() == [eos]  # the tiny template ends turns with EOS
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    assert stop_token_ids(bare).tolist() == [eos]


def test_extra_stop_tokens_must_be_one_token(tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    assert stop_token_ids(tokenizer, (".",)).numel() == 2
    try:
        stop_token_ids(tokenizer, ("wonderful movie",))
        raise AssertionError("a multi-token stop string was accepted")
    except Exception as exc:
        assert "must be one" in str(exc)


def test_the_local_sampler_sees_an_update_without_a_copy(tiny_dir):
    """sync_weights is a no-op because the sampler samples from the trained module itself: a change to its
    weights shows in the next rollout."""
    engine, model, tokenizer = sampler(tiny_dir)
    prompts = [tokenizer("the movie was")["input_ids"]] * 4
    greedy = SamplingSettings(max_new_tokens=4, greedy=True)
    before = engine.generate(prompts, greedy).response_ids
    with torch.no_grad():
        model.model.norm.weight.zero_()  # every logit is now 0: greedy picks token 0 at every step
    engine.sync_weights()
    after = engine.generate(prompts, greedy)
    assert not torch.equal(before, after.response_ids)
    assert (after.response_ids == 0).all()
