import random
import warnings

import numpy as np
import pytest
import torch
from transformers import get_scheduler

from rlhfkit.errors import UsageError
from rlhfkit.runtime.checkpoint import load_checkpoint, rng_state, save_checkpoint
from rlhfkit.runtime.outputs import CHECKPOINTS, MARKER


def assert_same(a, b, where="state"):
    """Nested dicts/lists/tuples equal, tensors equal bit for bit (same dtype, same values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, where


def training_state() -> dict:
    """What a trainer saves: weights, AdamW after a step, both kinds of scheduler, a generator, counters."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    linear = get_scheduler("linear", optimizer, num_warmup_steps=2, num_training_steps=10)
    halving = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    with warnings.catch_warnings():  # two schedulers on one optimiser: torch warns about the step order
        warnings.simplefilter("ignore")
        linear.step()
        halving.step()
    return {
        "model": model.state_dict(),
        "optimizers": [optimizer.state_dict()],
        "schedulers": [linear.state_dict(), halving.state_dict()],
        "generator": torch.Generator().manual_seed(3).get_state(),
        "kl_coef": 0.05,
        "bad_steps": 2,
    }


def test_state_round_trips_exactly(tmp_path):
    state = training_state()
    # AdamW after one step holds tensors (exp_avg, step) and a tuple (betas): the parts worth checking
    assert state["optimizers"][0]["state"][0]["exp_avg"].abs().sum() > 0
    path = save_checkpoint(tmp_path, 3, state, keep=2)
    assert path == tmp_path / CHECKPOINTS / "step-00000003" and (path / MARKER).is_file()
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3
    assert_same({k: loaded[k] for k in state}, state)


def test_random_streams_continue_identically_after_restore(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    np.random.randn()  # the legacy Gaussian draws two values and caches one: that cache must survive too
    assert np.random.get_state()[3] == 1  # has_gauss
    path = save_checkpoint(tmp_path, 1, {}, keep=1)

    def draws():
        return random.random(), np.random.randn(3).tolist(), np.random.randint(0, 2**31), torch.rand(3)

    expected = draws()
    draws()  # move every stream on, as the training steps after a checkpoint would
    load_checkpoint(path)
    got = draws()
    # the same generator states give the same bits: exact equality, no tolerance
    assert got[:3] == expected[:3]
    assert torch.equal(got[3], expected[3])


def write_checkpoint_folder(out, payload):
    """`payload` saved with plain torch.save where save_checkpoint would put a checkpoint."""
    folder = out / CHECKPOINTS / "step-00000001"
    folder.mkdir(parents=True)
    torch.save(payload, folder / "state.pt")
    (folder / MARKER).write_text('{"step": 1}\n')
    return folder


def test_a_state_pt_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    # a whole checkpoint but for one object: an unrestricted load would return it and pass
    folder = write_checkpoint_folder(tmp_path / "out", {"step": 1, "rng": rng_state(), "x": Hostile()})
    with pytest.raises(UsageError, match="not a checkpoint rlhfkit can load safely") as refused:
        load_checkpoint(folder)
    assert str(folder) in str(refused.value) and "\n" not in str(refused.value)
    assert "exec" in str(refused.value)  # names the global it refused
    assert not marker.exists()
    # control: the file is hostile indeed, an unrestricted load runs the payload (so the test above can fail)
    torch.load(folder / "state.pt", weights_only=False)
    assert marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_a_usage_error(tmp_path):
    folder = write_checkpoint_folder(tmp_path / "out", torch.zeros(2))  # loads safely, but holds no state
    with pytest.raises(UsageError, match=r"not a checkpoint rlhfkit can load safely \(no random states"):
        load_checkpoint(folder)
    (folder / "state.pt").write_bytes(b"not a zip file")
    with pytest.raises(UsageError, match="not a checkpoint rlhfkit can load safely") as refused:
        load_checkpoint(folder)
    assert "\n" not in str(refused.value)


def test_loading_an_optimizer_state_keeps_the_fused_kernel():
    """Saved param groups replace the live ones on load: the run's own kernel choice is kept."""
    import torch

    from rlhfkit.runtime.sharding import load_optimizer_state

    weight = torch.nn.Parameter(torch.ones(3))
    saved = torch.optim.AdamW([weight], foreach=False).state_dict()  # an older run's per-tensor optimiser
    live = torch.optim.AdamW([weight], fused=True)
    load_optimizer_state(None, None, live, saved)
    assert live.param_groups[0]["fused"] is True and not live.param_groups[0]["foreach"]
