import pytest
import torch

DTYPES = [torch.float32, torch.float64]
# Tight tolerances per dtype for values worked out by hand.
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


@pytest.fixture(params=DTYPES, ids=["fp32", "fp64"])
def dtype(request):
    return request.param


@pytest.fixture
def tol(dtype):
    return TOL[dtype]
