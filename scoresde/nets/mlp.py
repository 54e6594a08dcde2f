r"""A time-conditioned residual MLP for low-dimensional data.

.. math::
    e &= \mathrm{MLP}(\mathrm{embed}(\tau(t))) + E_y[y], \qquad h_0 = W_{in}\, x, \\
    h_{k+1} &= h_k + W_{2,k}\, \mathrm{SiLU}\big(W_{1,k}\, \mathrm{SiLU}(\mathrm{LN}(h_k)) + U_k e\big), \qquad
    F = W_{out}\, \mathrm{SiLU}(\mathrm{LN}(h_K)),

with the noise level fed as ``tau = lambda(t)`` (the half log-SNR, the same scale for every SDE;
Kingma et al. 2021) or ``tau = t / T``. The output ``F`` *is* the prediction named by
``parameterization`` (eps, score, x0, v or velocity): :class:`~scoresde.models.ScoreModel` converts
it to the other views, so an eps network and an x0 network are different functions that training
fits differently. The output layer starts at zero, so training starts from ``F = 0``.

The network sees ``x_t`` as it is. For data or SDEs whose ``x_t`` is far from unit scale (VE reaches
sigma_max = 50) wrap it in EDM's preconditioning, :class:`scoresde.nets.precondition.EDMPrecondition`
(``TrainConfig(precondition='edm')``), which scales the input and re-expresses a unit-scale output.

Class conditioning (for classifier-free guidance, Ho & Salimans 2022): with ``num_classes = K``
the label embedding table has K + 1 rows; row ``K`` (:attr:`null_label`) is the "no label" token
used when ``y`` is None or dropped during training.

The interface ``net(x, t, y=None)`` is the one every network of :mod:`scoresde.nets` shares.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..sde import SDE
from .embedding import EMBEDDINGS
from .layers import DEFAULT_EMBED_SCALE as _DEFAULT_SCALE
from .layers import TIME_INPUTS, check_common
from .layers import positive_int as _positive_int

__all__ = ["ScoreMLP", "TIME_INPUTS"]



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
        sde: the SDE whose lambda(t) (or T) conditions the network.
        parameterization: what the output is (``scoresde.PARAMETERIZATIONS``).
        width, depth: hidden width and number of residual blocks.
        embedding: ``'fourier'`` or ``'sinusoidal'``; ``emb_dim`` its size (even).
        time_input: ``'log_snr'`` (embed lambda(t)) or ``'t'`` (embed t / T).
        embed_scale: frequency scale of the embedding (default per embedding and time input).
        num_classes: number of labels for conditioning (None: unconditional).
    """

    def __init__(self, dim: int, sde: SDE, parameterization: str = "eps", *, width: int = 128, depth: int = 3,
                 embedding: str = "fourier", emb_dim: int = 64, time_input: str = "log_snr",
                 embed_scale: float | None = None, num_classes: int | None = None):
        super().__init__()
        _positive_int("dim", dim)
        _positive_int("width", width)
        _positive_int("depth", depth)
        check_common(sde, parameterization, embedding, time_input, embed_scale, num_classes)
        self.dim, self.sde, self.parameterization = dim, sde, parameterization
        self.time_input, self.num_classes = time_input, num_classes
        scale = _DEFAULT_SCALE[(embedding, time_input)] if embed_scale is None else embed_scale
        self.embed = EMBEDDINGS[embedding](emb_dim, scale)
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.label_embed = nn.Embedding(num_classes + 1, width) if num_classes is not None else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_ResBlock(width, width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        # zero output layer: training starts from F = 0
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
        tau = self.sde._lam(t) if self.time_input == "log_snr" else t / self.sde.T  # t: checked by the caller
        e = self.time_mlp(self.embed(tau))
        if self.label_embed is not None:
            if y is None:
                y = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            e = e + self.label_embed(y)
        elif y is not None:
            raise ValueError("y: this network is unconditional (num_classes=None); pass y=None")
        e = nn.functional.silu(e)
        h = self.inp(x.reshape(B, self.dim))
        for block in self.blocks:
            h = block(h, e)
        return self.out(nn.functional.silu(self.out_norm(h))).reshape(x.shape)
