r"""A time-conditioned residual MLP for low-dimensional data.

.. math::
    e &= \mathrm{MLP}(\mathrm{embed}(\tau(t))) + E_y[y], \qquad
    h_0 = W_{in}\, c_{in}(t)\, x, \\
    h_{k+1} &= h_k + W_{2,k}\, \mathrm{SiLU}\big(W_{1,k}\, \mathrm{SiLU}(\mathrm{LN}(h_k)) + U_k e\big), \qquad
    F = W_{out}\, \mathrm{SiLU}(\mathrm{LN}(h_K)),

with the noise level fed as ``tau = lambda(t)`` (the half log-SNR, the same scale for every SDE;
Kingma et al. 2021) or ``tau = t / T``. The input is scaled to unit variance,
``c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)`` (Karras et al. 2022, "EDM", table 1), which
matters for VE SDEs whose x_t reaches sigma_max = 50. The raw output F is preconditioned as in
Karras et al. (2022, "EDM", eq. 7), written with (alpha, sigma) so it suits every SDE of the family:

.. math::
    \hat x_0 = c_{skip} x + c_{out} F, \quad c_{skip} = \alpha \sigma_d^2 c_{in}^2, \quad
    c_{out} = -\sigma \sigma_d c_{in}; \qquad
    \hat\varepsilon = \sigma c_{in}^2 x + \alpha \sigma_d c_{in} F,

a consistent pair (``alpha x0_hat + sigma eps_hat = x``). ``F = 0`` is the exact denoiser of
``N(0, sigma_data^2 I)`` data (the Wiener filter), so the network starts from a sensible score at
every t and learns a unit-scale correction; neither x0_hat nor eps_hat divides by a vanishing alpha
or sigma (VP and flow near T, all SDEs near 0), which keeps probability-flow trajectories bounded
even where F is poor. The output is then expressed in ``parameterization``: ``eps_hat``,
``x0_hat``, ``score = -eps_hat / sigma``, ``v = alpha eps_hat - sigma x0_hat`` or
``velocity = alpha' x0_hat + sigma' eps_hat``. The choice of parameterisation thus fixes what the
network reports (and, through :class:`~scoresde.models.ScoreModel`, how samplers read it), while
the loss weighting decides which errors training emphasises.

Class conditioning (for classifier-free guidance, Ho & Salimans 2022): with ``num_classes = K``
the label embedding table has K + 1 rows; row ``K`` (:attr:`null_label`) is the "no label" token
used when ``y`` is None or dropped during training.

The interface ``net(x, t, y=None)`` is the one every network of :mod:`scoresde.nets` shares.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._tensor import append_dims
from ..models import PARAMETERIZATIONS
from ..sde import SDE
from .embedding import EMBEDDINGS

__all__ = ["ScoreMLP", "TIME_INPUTS"]

TIME_INPUTS = ("log_snr", "t")
_DEFAULT_SCALE = {("fourier", "log_snr"): 1.0, ("fourier", "t"): 16.0,
                  ("sinusoidal", "log_snr"): 100.0, ("sinusoidal", "t"): 1000.0}


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return v


class _ResBlock(nn.Module):
    def __init__(self, width: int, emb_width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_width, width)
        self.lin2 = nn.Linear(width, width)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        z = self.lin1(nn.functional.silu(self.norm(h))) + self.emb(e)
        return h + self.lin2(nn.functional.silu(z))


class ScoreMLP(nn.Module):
    """Residual MLP ``net(x, t, y=None)`` for data of shape ``(B, dim)`` (or ``(B, *event)`` with
    ``prod(event) == dim``), predicting ``parameterization`` under ``sde``.

    Args:
        dim: number of data dimensions.
        sde: the SDE whose alpha, sigma, lambda condition and scale the network.
        parameterization: what the output means (``scoresde.PARAMETERIZATIONS``).
        width, depth: hidden width and number of residual blocks.
        embedding: ``'fourier'`` or ``'sinusoidal'``; ``emb_dim`` its size (even).
        time_input: ``'log_snr'`` (embed lambda(t)) or ``'t'`` (embed t / T).
        embed_scale: frequency scale of the embedding (default per embedding and time input).
        sigma_data: data standard deviation for the input and x0 scalings.
        num_classes: number of labels for conditioning (None: unconditional).
    """

    def __init__(self, dim: int, sde: SDE, parameterization: str = "eps", *, width: int = 128, depth: int = 3,
                 embedding: str = "fourier", emb_dim: int = 64, time_input: str = "log_snr",
                 embed_scale: float | None = None, sigma_data: float = 1.0, num_classes: int | None = None):
        super().__init__()
        _positive_int("dim", dim)
        _positive_int("width", width)
        _positive_int("depth", depth)
        if not isinstance(sde, SDE):
            raise ValueError(f"sde: expected a scoresde.SDE, got {type(sde).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization: unknown {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding: unknown {embedding!r}; allowed: {', '.join(EMBEDDINGS)}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input: unknown {time_input!r}; allowed: {', '.join(TIME_INPUTS)}")
        if not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data: expected a finite positive number, got {sigma_data!r}")
        if num_classes is not None:
            _positive_int("num_classes", num_classes)
        self.dim, self.sde, self.parameterization = dim, sde, parameterization
        self.time_input, self.sigma_data, self.num_classes = time_input, float(sigma_data), num_classes
        scale = _DEFAULT_SCALE[(embedding, time_input)] if embed_scale is None else embed_scale
        self.embed = EMBEDDINGS[embedding](emb_dim, scale)
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.label_embed = nn.Embedding(num_classes + 1, width) if num_classes is not None else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_ResBlock(width, width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        # zero output layer: training starts from F = 0 (eps_hat = 0, score = 0, x0 = Wiener filter)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def null_label(self) -> int | None:
        """The reserved label index meaning "unconditional" (``num_classes``), or None."""
        return self.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        B = x.shape[0]
        if x[0].numel() != self.dim:
            raise ValueError(f"x: expected {self.dim} features per sample, got shape {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        if t.ndim == 0:
            t = t.expand(B)
        alpha, sigma = self.sde.alpha_sigma(t)
        tau = self.sde.lam(t) if self.time_input == "log_snr" else t / self.sde.T
        e = self.time_mlp(self.embed(tau))
        if self.label_embed is not None:
            if y is None:
                y = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            e = e + self.label_embed(y)
        elif y is not None:
            raise ValueError("y: this network is unconditional (num_classes=None); pass y=None")
        e = nn.functional.silu(e)
        # EDM input scaling: unit variance under a N(0, sigma_data^2) data model
        s_in = torch.rsqrt(alpha**2 * self.sigma_data**2 + sigma**2)
        h = self.inp(x.reshape(B, self.dim) * s_in[:, None])
        for block in self.blocks:
            h = block(h, e)
        F = self.out(nn.functional.silu(self.out_norm(h))).reshape(x.shape)
        sd = self.sigma_data
        a, s, c = (append_dims(v, x.ndim) for v in (alpha, sigma, s_in))
        p = self.parameterization
        if p in ("eps", "score", "v", "velocity"):
            eps = s * c**2 * x + a * sd * c * F
            if p == "eps":
                return eps
            if p == "score":
                return -c**2 * x - (a * sd * c / s) * F
        x0 = a * sd**2 * c**2 * x - s * sd * c * F
        if p == "x0":
            return x0
        if p == "v":
            return a * eps - s * x0
        d_alpha = a * append_dims(self.sde.f(t), x.ndim)
        d_sigma = append_dims(self.sde.dsigma_dt(t), x.ndim)
        return d_alpha * x0 + d_sigma * eps
