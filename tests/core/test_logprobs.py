import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rlhfkit.core.logprobs as logprobs_module
from rlhfkit.core import logprobs_from_logits


def naive(logits, tokens, temperature):
    """The twin: a full log_softmax, then gather."""
    return torch.log_softmax(logits.double() / temperature, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


def test_by_hand():
    # softmax([0, ln 2, ln 3]) = [1, 2, 3] / 6, so token 2 has log-prob ln(1/2).
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)]]], dtype=torch.float64)
    assert logprobs_from_logits(logits, torch.tensor([[2]])).item() == pytest.approx(math.log(0.5), abs=1e-12)
    # At T = 2 the scaled logits are [0, ln sqrt 2, ln sqrt 3]: token 0 has log-prob -ln(1 + sqrt 2 + sqrt 3).
    expected = -math.log(1 + math.sqrt(2) + math.sqrt(3))
    assert logprobs_from_logits(logits, torch.tensor([[0]]), 2.0).item() == pytest.approx(expected, abs=1e-12)


@pytest.fixture(params=[False, True], ids=["one-chunk", "many-chunks"])
def chunking(request, monkeypatch):
    if request.param:  # 7 elements per chunk: every code path walks several chunks
        monkeypatch.setattr(logprobs_module, "_CHUNK_ELEMENTS", 7)


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.0, 2.5])
def test_equals_log_softmax_gather(temperature, dtype, chunking):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=g, dtype=dtype) * 4
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    out = logprobs_from_logits(logits, tokens, temperature)
    assert out.dtype == dtype
    torch.testing.assert_close(out, naive(logits, tokens, temperature).to(dtype))


@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.0])
def test_gradient_equals_log_softmax_gradient(temperature, chunking):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 9, (2, 4), generator=g)
    upstream = torch.randn(2, 4, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(
        (logprobs_from_logits(logits, tokens, temperature) * upstream).sum(), logits
    )
    (expected,) = torch.autograd.grad((naive(logits, tokens, temperature) * upstream).sum(), logits)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: logprobs_from_logits(z, tokens, temperature), (logits,))


def test_strided_slice_and_bf16(chunking):
    g = torch.Generator().manual_seed(3)
    full = torch.randn(2, 8, 13, generator=g)
    logits = full[:, 2:-1]  # the non-contiguous slice a trainer takes: logits[:, ctx - 1 : -1]
    tokens = torch.randint(0, 13, (2, 5), generator=g)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens, 0.7), naive(logits, tokens, 0.7).float())
    # bf16 logits are read in fp32: same as the fp32 result on the bf16-rounded values.
    half = logits.bfloat16()
    out = logprobs_from_logits(half, tokens)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, naive(half.float(), tokens, 1.0).float())


class TensorSizes(TorchDispatchMode):
    """Records the size of every tensor an aten op creates (views excluded: they allocate nothing)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func._schema.name.startswith(
            (
                "aten::view",
                "aten::slice",
                "aten::select",
                "aten::as_strided",
                "aten::unsqueeze",
                "aten::squeeze",
                "aten::detach",
            )
        ):
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.sizes.append(t.numel())
        return out


@pytest.mark.parametrize("contiguous", [True, False])
def test_no_second_full_size_tensor(monkeypatch, contiguous):
    monkeypatch.setattr(logprobs_module, "_CHUNK_ELEMENTS", 1000)
    full = torch.randn(4, 17, 500)
    logits = (full if contiguous else full[:, 1:]).requires_grad_()  # a strided leaf in the second case
    tokens = torch.randint(0, 500, logits.shape[:2])
    with TensorSizes() as forward:
        out = logprobs_from_logits(logits, tokens, 0.7)
    assert max(forward.sizes) <= 1000, "forward made a tensor larger than one chunk"
    with TensorSizes() as backward:
        torch.autograd.grad(out.sum(), logits)
    # The gradient itself is the one (B, T, V) tensor; every temporary stays within a chunk.
    assert [n for n in backward.sizes if n > 1000] == [logits.numel()]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="align|expected"):
        logprobs_from_logits(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long))
