"""Log-probs and entropy from the LM head's input, chunk by chunk, against the plain path (the whole logits,
then `log_softmax`): values and every gradient equal; no (B, T, V) tensor."""

import pytest
import torch

import rlhfkit.core.logprobs as logprobs
from rlhfkit.core import entropy_from_hidden, entropy_from_logits, logprobs_from_hidden


def plain(hidden, weight, tokens, temperature, bias=None):
    logits = hidden @ weight.T + (0 if bias is None else bias)  # (B, T, V)
    return torch.log_softmax(logits.double() / temperature, -1).gather(-1, tokens[..., None]).squeeze(-1)


@pytest.fixture
def small_chunks(monkeypatch):
    # 3 rows of the 37-token vocabulary per chunk: chunks end mid-row and mid-batch
    monkeypatch.setattr(logprobs, "_CHUNK_ELEMENTS", 3 * 37)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_equal_the_plain_path(small_chunks, with_bias, temperature):
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(37, 8, requires_grad=True)
    bias = torch.randn(37, requires_grad=True) if with_bias else None
    tokens = torch.randint(37, (2, 5))
    upstream = torch.randn(2, 5)
    chunked = logprobs_from_hidden(hidden, weight, tokens, temperature, bias)
    grads = torch.autograd.grad((chunked * upstream).sum(), [hidden, weight, *([bias] if with_bias else [])])
    reference = plain(hidden, weight, tokens, temperature, bias)
    expected = torch.autograd.grad(
        (reference * upstream).sum(), [hidden, weight, *([bias] if with_bias else [])]
    )
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked.double(), reference, rtol=0, atol=1e-5)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-5)


def test_a_tied_embedding_gets_both_gradients(small_chunks):
    """The head's weight is the embedding matrix: its gradient sums the head's and the embedding's."""
    torch.manual_seed(1)
    embedding = torch.randn(37, 8, requires_grad=True)
    tokens = torch.randint(37, (2, 5))
    hidden = torch.tanh(embedding[tokens])  # (2, 5, 8) a "model" reading the same matrix
    (chunked,) = torch.autograd.grad(logprobs_from_hidden(hidden, embedding, tokens).sum(), embedding)
    hidden2 = torch.tanh(embedding[tokens])
    (expected,) = torch.autograd.grad(plain(hidden2, embedding, tokens, 1.0).sum(), embedding)
    torch.testing.assert_close(chunked.double(), expected.double(), rtol=1e-5, atol=1e-5)


def test_bf16_states_are_computed_in_fp32():
    torch.manual_seed(2)
    hidden, weight = torch.randn(1, 4, 8).bfloat16(), torch.randn(37, 8).bfloat16()
    tokens = torch.randint(37, (1, 4))
    got = logprobs_from_hidden(hidden, weight, tokens)
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got.double(), plain(hidden.double(), weight.double(), tokens, 1.0), atol=1e-5, rtol=0
    )


def test_entropy_equals_the_plain_path(small_chunks):
    torch.manual_seed(3)
    hidden, weight, bias = torch.randn(2, 5, 8), torch.randn(37, 8), torch.randn(37)
    got = entropy_from_hidden(hidden, weight, 0.7, bias)
    torch.testing.assert_close(got, entropy_from_logits(hidden @ weight.T + bias, 0.7), rtol=0, atol=1e-5)


def test_no_logits_tensor_is_kept_for_the_backward():
    """What autograd keeps is the states, the weight and (B, T) numbers: nothing of size V per position."""
    hidden = torch.randn(4, 16, 8, requires_grad=True)
    weight = torch.randn(1000, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        logprobs_from_hidden(hidden, weight, torch.randint(1000, (4, 16))).sum()
    assert max(saved) == weight.numel() and 4 * 16 * 1000 not in saved


def test_bad_shapes_and_temperature_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_hidden(torch.zeros(1, 2, 3), torch.zeros(5, 3), torch.zeros(1, 2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="expected hidden"):
        logprobs_from_hidden(torch.zeros(1, 2, 3), torch.zeros(5, 4), torch.zeros(1, 2, dtype=torch.long))


def test_under_bf16_autocast_the_head_is_still_computed_in_fp32():
    torch.manual_seed(4)
    hidden, weight = torch.randn(1, 4, 8, requires_grad=True), torch.randn(37, 8)
    tokens = torch.randint(37, (1, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = logprobs_from_hidden(hidden, weight, tokens)
        (grad,) = torch.autograd.grad(got.sum(), hidden)
    want = plain(hidden, weight, tokens, 1.0)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)  # bf16 products would miss by ~1e-2
    (expected,) = torch.autograd.grad(want.sum(), hidden)
    torch.testing.assert_close(grad.double(), expected.double(), rtol=1e-5, atol=1e-5)


def test_a_frozen_head_gets_no_gradient_and_the_states_the_same_one(small_chunks):
    torch.manual_seed(5)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(37, 8)  # frozen, as a LoRA model's head
    tokens = torch.randint(37, (2, 5))
    (grad,) = torch.autograd.grad(logprobs_from_hidden(hidden, weight, tokens).sum(), hidden)
    (expected,) = torch.autograd.grad(plain(hidden, weight, tokens, 1.0).sum(), hidden)
    torch.testing.assert_close(grad.double(), expected.double(), rtol=1e-5, atol=1e-5)
    assert weight.grad is None
