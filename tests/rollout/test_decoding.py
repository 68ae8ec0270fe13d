"""The static-cache decoder (the CUDA-graph path) samples exactly what the eager decoder samples: same tokens
for the same noise, with left padding, stop tokens, early stopping and a cache reused across batches."""

import pytest
import torch

from rlhfkit.data import pad
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.rollout import SamplingSettings, generate
from rlhfkit.rollout.decoding import EagerDecoder, StaticDecoder, choose_decoder, make_decoder


@pytest.fixture(scope="module")
def model_and_prompts(tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, tokenizer).eval()
    texts = ["the movie was", "the pizza", "I think this", "the waiter said the soup was"]
    ids, mask = pad([tokenizer(t)["input_ids"] for t in texts], tokenizer.pad_token_id, side="left")
    assert (mask == 0).any()  # left padding to hide
    return model, tokenizer, ids, mask


def sample(model, tokenizer, ids, mask, decoder, settings, seed, stop=None):
    stop = torch.tensor([tokenizer.eos_token_id]) if stop is None else stop
    return generate(
        model,
        ids,
        mask,
        settings,
        stop,
        tokenizer.pad_token_id,
        torch.Generator().manual_seed(seed),
        None,
        decoder,
    )


@pytest.mark.parametrize("width_multiple", [1, 16])
def test_the_static_decoder_samples_the_eager_decoders_tokens(model_and_prompts, width_multiple):
    model, tokenizer, ids, mask = model_and_prompts
    static = StaticDecoder(model, width_multiple=width_multiple)
    settings = SamplingSettings(max_new_tokens=12, temperature=0.9)
    for seed in range(3):  # the same cache, reset between batches
        eager = sample(model, tokenizer, ids, mask, EagerDecoder(model), settings, seed)
        fixed = sample(model, tokenizer, ids, mask, static, settings, seed)
        assert torch.equal(eager.response_ids, fixed.response_ids)
        assert torch.equal(eager.response_mask, fixed.response_mask)
        torch.testing.assert_close(eager.logprobs, fixed.logprobs, atol=1e-5, rtol=1e-5)
    assert len(static.caches) == 1


def test_stop_tokens_and_early_stopping_match(model_and_prompts):
    """A frequent token as the stop token: rows stop at different steps, and sampling ends early once all
    have; both decoders cut at the same places."""
    model, tokenizer, ids, mask = model_and_prompts
    settings = SamplingSettings(max_new_tokens=24, temperature=1.0)
    plain = sample(model, tokenizer, ids, mask, EagerDecoder(model), settings, 0)
    common = torch.mode(plain.response_ids.flatten()).values.reshape(1)  # (1,)
    eager = sample(model, tokenizer, ids, mask, EagerDecoder(model), settings, 0, common)
    fixed = sample(model, tokenizer, ids, mask, StaticDecoder(model), settings, 0, common)
    assert eager.stopped.any()
    assert torch.equal(eager.response_ids, fixed.response_ids)
    assert torch.equal(eager.stopped, fixed.stopped)


def test_greedy_and_top_k_match(model_and_prompts):
    model, tokenizer, ids, mask = model_and_prompts
    for settings in (
        SamplingSettings(8, greedy=True),
        SamplingSettings(8, temperature=0.7, top_k=5, top_p=0.9),
    ):
        eager = sample(model, tokenizer, ids, mask, EagerDecoder(model), settings, 1)
        fixed = sample(model, tokenizer, ids, mask, StaticDecoder(model), settings, 1)
        assert torch.equal(eager.response_ids, fixed.response_ids)


def test_the_compiled_step_traces_without_changing_samples(model_and_prompts):
    """The step torch.compile captures on CUDA, traced here by dynamo with the `eager` backend (no compiler
    needed): the graph it captures samples the same tokens, and it is the compiled step that ran (a compile
    failure would fall back to the uncompiled step, which samples the same tokens too)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) does not run on this Python or platform")
    model, tokenizer, ids, mask = model_and_prompts
    settings = SamplingSettings(max_new_tokens=6, temperature=0.8)
    eager = sample(model, tokenizer, ids, mask, EagerDecoder(model), settings, 5)
    decoder = StaticDecoder(model, compile="eager", width_multiple=64)
    traced = sample(model, tokenizer, ids, mask, decoder, settings, 5)
    assert torch.equal(eager.response_ids, traced.response_ids)
    assert decoder.fallback is None and decoder.forward is not model
    # `generate` steps after each sampled token until every row has stopped: here none stopped early, so
    # 6 tokens, 6 compiled steps (the last one's logits unused)
    assert traced.response_ids.shape[1] == 6 and decoder.compiled_steps == 6


def test_auto_picks_the_graph_path_on_cuda_only(model_and_prompts):
    model = model_and_prompts[0]
    assert choose_decoder("auto", torch.device("cuda")) == "compiled"
    assert choose_decoder("auto", torch.device("cpu")) == "eager"
    assert choose_decoder("static", torch.device("cpu")) == "static"
    # FSDP gathers new weight tensors every rollout: eager, even when another decoder is asked for
    for asked in ("auto", "static", "compiled"):
        assert choose_decoder(asked, torch.device("cuda"), sharded=True) == "eager"
    # sliding-window layers recompile every token when compiled: the static cache, uncompiled
    from transformers import MistralConfig

    assert choose_decoder("auto", torch.device("cuda"), config=MistralConfig(sliding_window=4)) == "static"
    assert choose_decoder("auto", torch.device("cuda"), config=model.config) == "compiled"
    assert isinstance(make_decoder(model, "eager"), EagerDecoder)
    assert make_decoder(model, "static").forward is model
    assert make_decoder(model, "compiled").forward is not model  # torch.compile wraps it (compiles lazily)


class FakeCompileError(Exception):
    """Stands for an error raised from inside torch.compile."""


FakeCompileError.__module__ = "torch._dynamo.exc"


def test_a_compile_failure_mid_step_reruns_the_batch_uncompiled(model_and_prompts):
    """The compiled step fails after the model already wrote part of the cache (a later subgraph failing):
    the decoder replays the batch uncompiled from its prompt, and samples what eager samples."""
    model, tokenizer, ids, mask = model_and_prompts
    decoder = StaticDecoder(model, width_multiple=16)
    calls = {"n": 0}

    def flaky(**arguments):
        calls["n"] += 1
        out = model(**arguments)  # the cache is written...
        if calls["n"] == 3:
            raise FakeCompileError("backend failed")  # ...then compiling a later part fails
        return out

    decoder.forward = flaky
    settings = SamplingSettings(max_new_tokens=8, temperature=0.9)
    eager = sample(model, tokenizer, ids, mask, EagerDecoder(model), settings, 4)
    recovered = sample(model, tokenizer, ids, mask, decoder, settings, 4)
    assert torch.equal(eager.response_ids, recovered.response_ids)
    assert decoder.forward is model  # uncompiled from then on
    assert decoder.fallback == "backend failed" and decoder.compiled_steps == 2  # the two before it failed


def test_an_error_that_is_not_compiling_is_raised(model_and_prompts):
    model, tokenizer, ids, mask = model_and_prompts
    decoder = StaticDecoder(model)

    def out_of_memory(**arguments):
        raise RuntimeError("CUDA out of memory")

    decoder.forward = out_of_memory
    with pytest.raises(RuntimeError, match="out of memory"):
        sample(model, tokenizer, ids, mask, decoder, SamplingSettings(max_new_tokens=4), 0)


def test_at_most_two_caches_are_kept(model_and_prompts):
    model, tokenizer, ids, mask = model_and_prompts
    decoder = StaticDecoder(model)
    for rows in (4, 3, 2, 3):
        sample(model, tokenizer, ids[:rows], mask[:rows], decoder, SamplingSettings(max_new_tokens=3), 0)
    assert [key[0] for key in decoder.caches] == [2, 3]  # the newest two, the latest used last


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_graph_decoder_samples_the_eager_tokens(model_and_prompts):
    """On CUDA, `auto` is the compiled decoder (torch.compile, CUDA graphs): same tokens as eager there, over
    several batches through the same captured step."""
    model, tokenizer, ids, mask = model_and_prompts
    model, ids, mask = model.cuda(), ids.cuda(), mask.cuda()
    stop = torch.tensor([tokenizer.eos_token_id], device="cuda")
    settings = SamplingSettings(max_new_tokens=10, temperature=0.9)
    compiled = make_decoder(model, choose_decoder("auto", ids.device))
    try:
        for seed in range(3):
            noise = torch.rand(10, ids.shape[0], generator=torch.Generator().manual_seed(seed)).cuda()
            run = [
                generate(model, ids, mask, settings, stop, tokenizer.pad_token_id, None, noise, decoder)
                for decoder in (EagerDecoder(model), compiled)
            ]
            assert torch.equal(run[0].response_ids, run[1].response_ids)
    finally:
        model.cpu()


def test_a_torch_without_dynamos_exception_classes_still_recognises_compile_failures(monkeypatch):
    """`torch._dynamo.exc` is private API: where its names are missing, an exception raised from dynamo's or
    inductor's modules is still a compile failure (fallback), and any other is not (raised)."""
    import torch._dynamo.exc

    from rlhfkit.rollout.decoding import _compile_failure, _dynamo_exceptions

    assert torch._dynamo.exc.BackendCompilerFailed in _dynamo_exceptions()  # this torch has them
    monkeypatch.delattr(torch._dynamo.exc, "TorchDynamoException")  # a torch that renamed it
    assert _dynamo_exceptions() == ()
    assert _compile_failure(FakeCompileError("backend failed"))  # raised from torch._dynamo.exc
    assert not _compile_failure(RuntimeError("CUDA out of memory"))
