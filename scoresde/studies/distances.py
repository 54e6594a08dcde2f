"""Distances between a sampler's output and its reference or the data.

* :func:`endpoint_error`: ``mean_b |x_b - ref_b|``, the mean per-sample Euclidean distance between
  two batches that started from the same ``x_T`` (the statistic of every error-against-steps study).
* :func:`w2_exact` and :func:`sliced_w2`: distances between point clouds (:mod:`scoresde.metrics`),
  to be read beside the *two-sample floor*, the same distance between two independent data draws of
  the same size (no sampler can beat it with that many points).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["endpoint_error", "w2_exact", "sliced_w2", "distribution_error"]


def endpoint_error(x: Tensor, ref: Tensor) -> float:
    """Mean over the batch of the per-sample Euclidean distance ``|x - ref|``."""
    return float((x - ref).flatten(1).norm(dim=1).mean())


def w2_exact(x: Tensor, y: Tensor) -> float:
    """Exact W2 between two empirical measures with uniform weights (:func:`scoresde.metrics.wasserstein2`)."""
    from ..metrics import wasserstein2

    return wasserstein2(x.detach().flatten(1).double(), y.detach().flatten(1).double())


def sliced_w2(x: Tensor, y: Tensor, *, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 along directions fixed by ``seed``, so every comparison uses the same ones."""
    from ..metrics import sliced_wasserstein

    gen = torch.Generator().manual_seed(seed)
    return sliced_wasserstein(x.detach().flatten(1).double().cpu(), y.detach().flatten(1).double().cpu(),
                              n_projections=n_projections, generator=gen)


def distribution_error(samples: Tensor, data: Tensor, mixture=None) -> dict[str, float]:
    """Exact W2 and sliced W2 against ``data``; for a mixture also the mean exact log-density."""
    out = {"w2": w2_exact(samples, data), "sliced_w2": sliced_w2(samples, data)}
    if mixture is not None:
        out["mean_log_density"] = float(mixture.log_prob(samples.detach().double().cpu()).mean())
    return out
