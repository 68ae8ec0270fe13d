"""Properties every core function shares: inputs untouched, dtype kept, torch-only imports."""

import subprocess
import sys

import pytest
import torch

import rlhfkit.core as core


def inputs(dtype):
    g = torch.Generator().manual_seed(0)
    b, t, v = 3, 5, 7

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    mask = torch.arange(t)[None, :] < torch.tensor([[5], [2], [4]])
    return {
        "masked_mean": (randn(b, t), mask),
        "masked_var": (randn(b, t), mask),
        "masked_whiten": (randn(b, t), mask),
        "logprobs_from_logits": (randn(b, t, v), torch.randint(0, v, (b, t), generator=g), 0.7),
        "kl_estimate": (randn(b, t), randn(b, t), "k3"),
        "kl_shaped_rewards": (randn(b), randn(b, t), randn(b, t), mask, 0.1),
        "gae": (randn(b, t), randn(b, t), mask),
        "ppo_policy_loss": (randn(b, t), randn(b, t), randn(b, t), mask),
        "masked_aggregate": (randn(b, t), mask, "sequence_sum_norm"),
        "group_normalised_scores": (randn(b), 3),
        "leave_one_out_scores": (randn(b), 3),
        "estimator_rewards": (randn(b), randn(b, t), randn(b, t), mask, 0.1, "rloo", 3),
        "estimator_advantages": (randn(b, t), randn(b, t), mask, "reinforce_pp"),
        "value_loss": (randn(b, t), randn(b, t), randn(b, t), mask),
        "pairwise_loss": (randn(b), randn(b), randn(b)),
        "ptx_loss": (randn(b, t, v), torch.randint(0, v, (b, t), generator=g), mask),
    }


@pytest.mark.parametrize("name", list(inputs(torch.float32)))
def test_inputs_unchanged_and_dtype_kept(name, dtype):
    args = inputs(dtype)[name]
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = getattr(core, name)(*args)
    for a, b in zip(args, before, strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), f"{name} changed an input"
    first = out[0] if isinstance(out, tuple) else out
    assert first.dtype == dtype


def test_import_core_needs_torch_only():
    heavy = "('transformers', 'datasets', 'accelerate')"
    code = f"import sys, rlhfkit.core; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    for name, args in inputs(torch.float32).items():
        moved = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        cpu = getattr(core, name)(*args)
        gpu = getattr(core, name)(*moved)
        first_cpu = cpu[0] if isinstance(cpu, tuple) else cpu
        first_gpu = gpu[0] if isinstance(gpu, tuple) else gpu
        torch.testing.assert_close(first_gpu.cpu(), first_cpu, rtol=1e-4, atol=1e-5)
