"""Private torch APIs behind a guard: another torch version degrades to the plain path, it does not crash."""

from types import SimpleNamespace

import torch

from rlhfkit.runtime.sharding import adamw, fused_kernel_devices


def build():
    module = torch.nn.Linear(2, 1)
    accelerator = SimpleNamespace(device=torch.device("cpu"))  # one process: not sharded
    return module, adamw(
        module, [{"params": list(module.parameters())}], accelerator, lr=0.1, weight_decay=0.0
    )


def test_adamw_is_fused_where_torch_says_the_kernel_runs():
    assert "cpu" in fused_kernel_devices()  # this torch: a fused CPU kernel
    assert build()[1].defaults["fused"] is True


def test_without_torchs_private_device_list_adamw_takes_the_per_tensor_path(monkeypatch):
    import torch.utils._foreach_utils as foreach

    monkeypatch.delattr(foreach, "_get_fused_kernels_supported_devices")  # a torch that renamed it
    assert fused_kernel_devices() == ()
    module, optimizer = build()
    assert not optimizer.defaults["fused"]
    module(torch.ones(1, 2)).sum().backward()
    before = module.weight.detach().clone()
    # still trains: Adam's first step is lr * g / (|g| + eps), here 0.1 against each weight's gradient (1)
    optimizer.step()
    torch.testing.assert_close(module.weight.detach(), before - 0.1, rtol=0, atol=1e-6)
