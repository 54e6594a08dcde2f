r"""The DDPM / ADM U-Net for images (Ho et al. 2020; Dhariwal & Nichol 2021, openai/improved-diffusion).

For an image ``x`` of shape ``(B, C, I, I)`` and the conditioning vector
``e = MLP(phi(tau(t))) + E[y]`` of :class:`~scoresde.nets.layers.NoiseLevelEmbedding` (width 4 c,
with ``c = channels``), the network is

.. math::
    h_0 = \mathrm{Conv}_{3\times3}(x), \qquad
    \text{down: } h \leftarrow \mathrm{Attn}^{?}(\mathrm{Res}(h, e)) \ (\times\ \texttt{num\_res\_blocks}),
    \ h \leftarrow \mathrm{Down}(h) \ \text{between levels},

    \text{middle: } \mathrm{Res} \to \mathrm{Attn} \to \mathrm{Res}, \qquad
    \text{up: } h \leftarrow \mathrm{Attn}^{?}(\mathrm{Res}([h, s], e)) \ (\times\ \texttt{num\_res\_blocks} + 1),
    \ h \leftarrow \mathrm{Up}(h),

    F = \mathrm{Conv}_{3\times3}(\mathrm{SiLU}(\mathrm{GN}(h))),

where every down-path activation ``s`` (after the input conv, each block and each downsampling) is
a skip concatenated, last in first out, onto the up path. Level ``l`` (of ``len(channel_mult)``)
works at resolution ``I / 2^l`` with ``c * channel_mult[l]`` channels; ``Attn^?`` is present where
that resolution is in ``attn_resolutions`` (the middle block always attends).

* Residual block with FiLM conditioning (scale and shift, ADM's ``use_scale_shift_norm``):

  .. math::
      z = \mathrm{Conv}(\mathrm{SiLU}(\mathrm{GN}(h))), \quad
      (\gamma, \beta) = W\,\mathrm{SiLU}(e), \quad
      \mathrm{Res}(h, e) = P h + \mathrm{Conv}_0\big(\mathrm{Drop}(\mathrm{SiLU}(\mathrm{GN}(z)(1 + \gamma) + \beta))\big),

  ``P`` a 1x1 conv when the width changes (else the identity). ``GN`` is GroupNorm with
  ``norm_groups`` groups.
* Self-attention (Vaswani et al. 2017) over the ``H W`` positions, multi-head,
  ``h + W_0 \mathrm{softmax}(q k^T / \sqrt{d}) v`` with q, k, v 1x1 convs of ``GN(h)``.
* ``Down``: a stride-2 3x3 conv; ``Up``: nearest-neighbour doubling then a 3x3 conv. The image size
  must therefore be a multiple of ``2^(len(channel_mult) - 1)``: 28 allows up to three levels
  (28, 14, 7), 8 up to four.
* ``Conv_0`` (the last conv of each residual block), the attention output ``W_0`` and the output conv
  start at zero (improved-diffusion's ``zero_module``): each block starts as its skip path, and the
  untrained network outputs exactly ``F = 0``.

``F`` is the raw prediction of whatever ``parameterization`` names (``eps``, ``x0``, ``v``, ...): no
preconditioning is applied inside; :class:`~scoresde.models.ScoreModel` converts it. The interface
is the one every network of :mod:`scoresde.nets` shares, ``net(x, t_input, y=None)``.

The defaults (``channels=32``, ``channel_mult=(1, 2, 2)``, two blocks per level, attention in the
middle block only) are the small net recommended for 8x8 digits: 1.66 M parameters.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional

from .._tensor import append_dims
from ..sde import SDE
from .layers import NoiseLevelEmbedding, check_common, check_image, positive_int, positive_ints, time_batch

__all__ = ["UNet"]


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        z = self.conv1(functional.silu(self.norm1(h)))
        gamma, beta = (append_dims(v, 4) for v in self.film(functional.silu(e)).chunk(2, dim=1))
        z = self.norm2(z) * (1 + gamma) + beta
        return self.skip(h) + self.conv2(self.dropout(functional.silu(z)))


class _SelfAttention(nn.Module):
    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, h: Tensor) -> Tensor:
        B, C, H, W = h.shape
        # (B, 3, heads, C/heads, HW) -> three (B, heads, HW, C/heads) sequences
        q, k, v = self.qkv(self.norm(h)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W).transpose(-1, -2).unbind(1)
        a = functional.scaled_dot_product_attention(q, k, v)
        return h + self.proj(a.transpose(-1, -2).reshape(B, C, H, W))


class _Stage(nn.Module):
    """A residual block, followed by self-attention at the chosen resolutions."""

    def __init__(self, res: _ResBlock, attn: _SelfAttention | None):
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        h = self.res(h, e)
        return h if self.attn is None else self.attn(h)


class _Down(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        return self.conv(h)


class _Up(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        return self.conv(functional.interpolate(h, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """U-Net ``net(x, t_input, y=None)`` for images ``(B, in_channels, image_size, image_size)``
    (architecture in the module docstring).

    Args:
        in_channels: image channels (the output has as many).
        sde: the SDE whose lambda(t) (or T) the time input is embedded through.
        parameterization: what the raw output means (``scoresde.PARAMETERIZATIONS``); metadata for
            :class:`~scoresde.models.ScoreModel`, no conversion happens inside.
        image_size: height = width of the images.
        channels: width ``c`` of the first level; level ``l`` has ``c * channel_mult[l]``.
        channel_mult: one multiplier per resolution level.
        num_res_blocks: residual blocks per level on the down path (one more on the up path).
        attn_resolutions: feature-map sizes (``image_size / 2^l``) that get self-attention.
        num_heads: attention heads (must divide the width of every attending level).
        dropout: dropout rate inside the residual blocks.
        norm_groups: GroupNorm groups (must divide every level's width).
        embedding, emb_dim, time_input, embed_scale: the noise-level features (``emb_dim`` of them,
            default ``channels``), as in :class:`~scoresde.nets.mlp.ScoreMLP`.
        num_classes: number of labels for conditioning (None: unconditional).
    """

    def __init__(self, in_channels: int, sde: SDE, parameterization: str = "eps", *, image_size: int,
                 channels: int = 32, channel_mult: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: tuple[int, ...] = (), num_heads: int = 1, dropout: float = 0.0,
                 norm_groups: int = 8, embedding: str = "smooth", emb_dim: int | None = None,
                 time_input: str = "log_snr", embed_scale: float | None = None, num_classes: int | None = None):
        super().__init__()
        positive_int("in_channels", in_channels)
        positive_int("image_size", image_size)
        positive_int("channels", channels)
        channel_mult = positive_ints("channel_mult", channel_mult)
        positive_int("num_res_blocks", num_res_blocks)
        attn_resolutions = positive_ints("attn_resolutions", attn_resolutions, allow_empty=True)
        positive_int("num_heads", num_heads)
        positive_int("norm_groups", norm_groups)
        emb_dim = channels if emb_dim is None else emb_dim
        positive_int("emb_dim", emb_dim)
        check_common(sde, parameterization, embedding, time_input, embed_scale, num_classes)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a number in [0, 1), got {dropout!r}")
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise ValueError(f"image_size: {image_size} cannot be halved {len(channel_mult) - 1} times "
                             f"(channel_mult={list(channel_mult)} has {len(channel_mult)} levels); allowed: multiples "
                             f"of {factor}, or fewer levels (at most {_levels_allowed(image_size)} for {image_size})")
        resolutions = [image_size // 2**level for level in range(len(channel_mult))]
        unknown = sorted(set(attn_resolutions) - set(resolutions))
        if unknown:
            raise ValueError(f"attn_resolutions: {unknown} are not feature-map sizes of this net; "
                             f"allowed: {resolutions}")
        widths = [channels * m for m in channel_mult]
        for w in widths:
            if w % norm_groups:
                raise ValueError(f"norm_groups: {norm_groups} does not divide the level width {w} "
                                 f"(channels={channels} x channel_mult={list(channel_mult)})")
        for res, w in zip(resolutions, widths, strict=True):
            if (res in attn_resolutions or res == resolutions[-1]) and w % num_heads:
                raise ValueError(f"num_heads: {num_heads} does not divide the width {w} of the attending level "
                                 f"at resolution {res}")

        self.in_channels, self.image_size, self.sde, self.parameterization = in_channels, image_size, sde, parameterization
        self.num_classes = num_classes
        e_dim = 4 * channels
        self.embed = NoiseLevelEmbedding(sde, emb_dim, e_dim, embedding=embedding, time_input=time_input,
                                         embed_scale=embed_scale, num_classes=num_classes)

        def stage(c_in: int, c_out: int, res: int) -> _Stage:
            attn = _SelfAttention(c_out, num_heads, norm_groups) if res in attn_resolutions else None
            return _Stage(_ResBlock(c_in, c_out, e_dim, dropout, norm_groups), attn)

        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, c = [channels], channels
        for level, (res, w) in enumerate(zip(resolutions, widths, strict=True)):
            for _ in range(num_res_blocks):
                self.down.append(stage(c, w, res))
                c = w
                skips.append(c)
            if level < len(widths) - 1:
                self.down.append(_Down(c))
                skips.append(c)
        self.mid1 = _ResBlock(c, c, e_dim, dropout, norm_groups)
        self.mid_attn = _SelfAttention(c, num_heads, norm_groups)
        self.mid2 = _ResBlock(c, c, e_dim, dropout, norm_groups)
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks + 1):
                self.up.append(stage(c + skips.pop(), widths[level], resolutions[level]))
                c = widths[level]
            if level > 0:
                self.up.append(_Up(c))
        self.out_norm = nn.GroupNorm(norm_groups, c)
        self.out = _zero(nn.Conv2d(c, in_channels, 3, padding=1))

    @property
    def null_label(self) -> int | None:
        """The reserved label index meaning "unconditional" (``num_classes``), or None."""
        return self.num_classes

    def forward(self, x: Tensor, t_input: Tensor, y: Tensor | None = None) -> Tensor:
        check_image(x, self.in_channels, self.image_size)
        e = self.embed(time_batch(t_input, x), y)
        h = self.inp(x)
        skips = [h]
        for module in self.down:
            h = module(h, e)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, e)), e)
        for module in self.up:
            if isinstance(module, _Stage):
                h = module(torch.cat([h, skips.pop()], dim=1), e)
            else:
                h = module(h, e)
        return self.out(functional.silu(self.out_norm(h)))


def _levels_allowed(image_size: int) -> int:
    """Number of levels an image of this size allows: one plus the times it halves exactly."""
    return 1 + int(math.log2(image_size & -image_size))
