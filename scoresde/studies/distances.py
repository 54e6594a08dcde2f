"""Distances between a sampler's output and its reference or the data.

* :func:`endpoint_error`: ``mean_b |x_b - ref_b|``, the mean per-sample Euclidean distance between
  two batches that started from the same ``x_T`` (the statistic of every error-against-steps study).
* :func:`w2_exact` and :func:`sliced_w2`: distances between point clouds (:mod:`scoresde.metrics`),
  to be read beside the *two-sample level* (:func:`two_sample_level`): the same distance from
  independent fresh data sets of the same size to the data. It is a spread, not a floor: an exact
  sampler's distance is one more draw from it, and a single draw can land well below the mean.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["endpoint_error", "w2_exact", "sliced_w2", "distribution_error", "two_sample_level"]


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


def two_sample_level(fresh: list[Tensor], data: Tensor) -> dict[str, float]:
    """Mean and standard deviation over ``fresh`` (independent data sets) of W2 and sliced W2 to ``data``.

    Returns ``{'w2', 'w2_sd', 'sliced_w2', 'sliced_w2_sd', 'draws'}``; the sd is 0 for a single set.
    """
    if not fresh:
        raise ValueError("fresh: expected at least one fresh data set")
    out: dict[str, float] = {"draws": len(fresh)}
    for key, dist in (("w2", w2_exact), ("sliced_w2", sliced_w2)):
        d = torch.tensor([dist(f, data) for f in fresh], dtype=torch.float64)
        out[key] = float(d.mean())
        out[key + "_sd"] = float(d.std()) if len(fresh) > 1 else 0.0
    return out
