"""Dynamic thresholding of data predictions (Saharia et al. 2022, "Imagen", sec. 2.3), shared by the
data-prediction samplers (DPM-Solver++, UniPC).

Per sample: ``s = min(max(quantile(|x0|, percentile), 1), max_value)``, then ``x0 <- clamp(x0, -s, s) / s``.
``max_value = inf`` is Saharia's rule; ``max_value = 1`` reduces it to a plain clip to [-1, 1]; a
``max_value`` below 1 (diffusers' ``sample_max_value``, e.g. 0.5) fixes ``s = max_value``: a clip to
``[-max_value, max_value]`` rescaled to ``[-1, 1]``, as diffusers' schedulers do.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._tensor import append_dims


def dynamic_threshold(x0: Tensor, percentile: float, max_value: float) -> Tensor:
    """Threshold a batch of data predictions (any shape ``(B, ...)``)."""
    flat = x0.reshape(x0.shape[0], -1).abs()
    # torch.quantile accepts float32/float64 only
    q = torch.quantile(flat if flat.dtype in (torch.float32, torch.float64) else flat.float(), percentile, dim=1)
    # the floor 1 first, then the cap: with max_value < 1 the cap wins (s = max_value), as in diffusers
    s = append_dims(q.clamp(min=1.0).clamp(max=max_value).to(x0.dtype), x0.ndim)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def check_threshold_options(percentile, max_value) -> tuple[float, float]:
    """Validate ``percentile`` in (0, 1] and ``max_value`` > 0 (inf allowed); return them as floats."""
    try:
        percentile, max_value = float(percentile), float(max_value)
    except (TypeError, ValueError):
        raise ValueError(f"percentile/max_value: expected numbers, got percentile={percentile!r}, "
                         f"max_value={max_value!r}") from None
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile: expected a quantile level in (0, 1], got {percentile!r}")
    if not max_value > 0.0:  # also rejects NaN
        raise ValueError(f"max_value: expected a number > 0 (inf: no cap), got {max_value!r}")
    return percentile, max_value
