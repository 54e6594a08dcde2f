"""Shared fixtures: every SDE of the family, built fresh for each test."""
import pytest
import torch

import scoresde as sd

# Tiny tensors gain nothing from intra-op threads, and a busy machine makes spinning OpenMP threads
# cost 100x on them: the suite runs single-threaded.
torch.set_num_threads(1)

SDE_FACTORIES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(),
    "cosine": lambda: sd.CosineVPSDE(),
    "discrete": lambda: sd.DiscreteVPSDE(),
    "flow": lambda: sd.FlowMatchingSDE(),
}


@pytest.fixture(params=sorted(SDE_FACTORIES))
def any_sde(request):
    """Each SDE of the family with its default parameters."""
    return SDE_FACTORIES[request.param]()


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)
