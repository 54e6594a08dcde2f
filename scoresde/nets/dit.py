r"""DiT, the diffusion transformer with adaLN-Zero conditioning (Peebles & Xie 2023, facebookresearch/DiT).

An image ``x`` of shape ``(B, C, I, I)`` is cut into ``N = (I/p)^2`` non-overlapping ``p x p``
patches, row-major, each flattened to ``p^2 C`` values in (row, column, channel) order
(:func:`patchify`; :func:`unpatchify` is its exact inverse). With ``D = hidden_size``:

.. math::
    z_0 = \mathrm{patchify}(x)\, W_{patch} + P, \qquad
    c = \mathrm{MLP}(\phi(\tau(t))) + E[y],

    (\beta_1, \gamma_1, \alpha_1, \beta_2, \gamma_2, \alpha_2) = W^{ada}_k\, \mathrm{SiLU}(c),

    z' = z + \alpha_1 \odot \mathrm{MHSA}\big(\mathrm{LN}(z)(1 + \gamma_1) + \beta_1\big), \qquad
    z_{k+1} = z' + \alpha_2 \odot \mathrm{MLP}\big(\mathrm{LN}(z')(1 + \gamma_2) + \beta_2\big),

    (\beta, \gamma) = W^{ada}_{out}\, \mathrm{SiLU}(c), \qquad
    F = \mathrm{unpatchify}\big((\mathrm{LN}(z_K)(1 + \gamma) + \beta)\, W_{out}\big),

with ``LN`` a LayerNorm without affine parameters (the adaLN regression replaces them), ``MHSA``
multi-head self-attention over the N tokens and ``MLP`` two linear layers of width
``mlp_ratio * D`` with a tanh-GELU. ``c`` is :class:`~scoresde.nets.layers.NoiseLevelEmbedding`
(the noise level ``tau = lambda(t)`` or ``t / T`` in smooth band-limited features, plus a label embedding
with a null class ``null_label = num_classes`` for classifier-free guidance).

**adaLN-Zero**: every ``W^{ada}_k`` (weights and bias) starts at zero, so the gates
``alpha_1 = alpha_2 = 0`` and each block is exactly the identity at initialisation; ``W^{ada}_{out}``
and ``W_{out}`` start at zero too, so the untrained network outputs exactly ``F = 0``.

``P`` is the fixed 2-D sin-cos position embedding (:func:`sincos_position_embedding_2d`): for the
token in patch row ``i``, column ``j`` and ``omega_k = 10000^{-k/(D/4)}``, ``k < D/4``,

.. math::
    P_{(i, j)} = [\sin(j\,\omega),\ \cos(j\,\omega),\ \sin(i\,\omega),\ \cos(i\,\omega)]
    \in \mathbb{R}^{D},

the column half first, as DiT builds it (MAE's ``get_2d_sincos_pos_embed``: ``np.meshgrid(w, h)``
puts the column coordinate in the half it calls ``emb_h``). Networks trained before issue 18 used
the row half first; ``position_order='row_first'`` rebuilds that layout, and a checkpoint whose
record names no ``position_order`` loads with it (:data:`scoresde.nets.LEGACY_OPTIONS`).

Initialisation as DiT's ``initialize_weights``: Xavier-uniform linear maps with zero biases in the
transformer and the patch embedding, the timestep MLP's weights and the label table ``N(0, 0.02^2)``
(the MLP's biases zero), adaLN-Zero (below) and a zero output layer.

``F`` is the raw prediction of ``parameterization`` (no preconditioning inside). With
``learn_sigma=True`` the output layer has ``2 C`` channels per pixel, as DiT's ``learn_sigma``:
the first ``C`` are ``F`` and the last ``C`` the variance output ``v`` of Nichol & Dhariwal (2021),
``Sigma = exp(v log beta_t + (1 - v) log beta~_t)``; ``net(x, t, y)`` returns ``F`` (the interface
every network of :mod:`scoresde.nets` shares) and :meth:`DiT.forward_with_variance` returns
``(F, v)``. No loss of this package trains ``v`` yet (the hybrid loss is issue 18's item 5).

The defaults (``patch_size=2``, ``hidden_size=128``, ``depth=6``, ``num_heads=4``, ``mlp_ratio=4``)
are the small net recommended for 8x8 digits (16 tokens): 1.86 M parameters.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional

from ..sde import SDE
from .layers import NoiseLevelEmbedding, check_common, check_image, positive_int, time_batch

__all__ = ["DiT", "patchify", "unpatchify", "sincos_position_embedding_2d", "POSITION_ORDERS"]


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """``(B, C, H, W) -> (B, (H/p)(W/p), p*p*C)``: row-major patches, each in (row, column, channel) order."""
    B, C, H, W = x.shape
    p = patch_size
    return x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: Tensor, patch_size: int, channels: int) -> Tensor:
    """The inverse of :func:`patchify` for a square image: ``(B, g^2, p*p*C) -> (B, C, g p, g p)``."""
    B, N, _ = tokens.shape
    g, p = math.isqrt(N), patch_size
    if g * g != N or tokens.shape[2] != p * p * channels:
        raise ValueError(f"tokens: expected shape (B, g^2, {p * p * channels}) for a square grid, got {tuple(tokens.shape)}")
    return tokens.reshape(B, g, g, p, p, channels).permute(0, 5, 1, 3, 2, 4).reshape(B, channels, g * p, g * p)


#: the halves of the 2-D position embedding: DiT's (column first) or the layout before issue 18 (row first)
POSITION_ORDERS = ("dit", "row_first")


def sincos_position_embedding_2d(grid_size: int, dim: int, dtype: torch.dtype = torch.float64,
                                 order: str = "dit") -> Tensor:
    """The fixed ``(grid_size^2, dim)`` 2-D sin-cos embedding of the patch grid (module docstring);
    ``order='dit'`` puts the column half first, ``'row_first'`` the row half."""
    if order not in POSITION_ORDERS:
        raise ValueError(f"position_order: unknown {order!r}; allowed: {', '.join(POSITION_ORDERS)}")
    if dim % 4:
        raise ValueError(f"dim: expected a multiple of 4 (sin and cos of row and column), got {dim!r}")
    quarter = dim // 4
    omega = torch.pow(10000.0, -torch.arange(quarter, dtype=torch.float64) / quarter)
    i, j = torch.meshgrid(torch.arange(grid_size, dtype=torch.float64), torch.arange(grid_size, dtype=torch.float64),
                          indexing="ij")
    ai, aj = i.reshape(-1, 1) * omega, j.reshape(-1, 1) * omega
    first, second = (aj, ai) if order == "dit" else (ai, aj)
    return torch.cat([torch.sin(first), torch.cos(first), torch.sin(second), torch.cos(second)], dim=1).to(dtype)


def _modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return h * (1 + scale) + shift


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, z: Tensor) -> Tensor:
        B, N, D = z.shape
        # (B, N, 3, heads, D/heads) -> three (B, heads, N, D/heads)
        q, k, v = self.qkv(z).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = functional.scaled_dot_product_attention(q, k, v)
        return self.proj(a.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """One transformer block with adaLN-Zero conditioning: ``block(z, c) -> z`` (identity at initialisation)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Linear(dim, 6 * dim)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(functional.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        z = z + gate1 * self.attn(_modulate(self.norm1(z), shift1, scale1))
        return z + gate2 * self.mlp(_modulate(self.norm2(z), shift2, scale2))


class _FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(functional.silu(c)).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm(z), shift, scale))


class DiT(nn.Module):
    """Diffusion transformer ``net(x, t_input, y=None)`` for images ``(B, in_channels, image_size, image_size)``
    (architecture in the module docstring).

    Args:
        in_channels: image channels (the output has as many).
        sde: the SDE whose lambda(t) (or T) the time input is embedded through.
        parameterization: what the raw output means (``scoresde.PARAMETERIZATIONS``); metadata for
            :class:`~scoresde.models.ScoreModel`, no conversion happens inside.
        image_size: height = width of the images (a multiple of ``patch_size``).
        patch_size: side ``p`` of the square patches; ``(image_size / p)^2`` tokens.
        hidden_size: token width ``D`` (a multiple of 4 and of ``num_heads``).
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: width of each block's MLP relative to ``D``.
        embedding, emb_dim, time_input, embed_scale: the noise-level features (``emb_dim`` of them,
            DiT's 256 by default), as in :class:`~scoresde.nets.mlp.ScoreMLP`.
        num_classes: number of labels for conditioning (None: unconditional).
        learn_sigma: a second set of ``in_channels`` outputs, the variance interpolation ``v``
            (DiT's ``learn_sigma``; see :meth:`forward_with_variance`).
        position_order: ``'dit'`` (column half first, as DiT) or ``'row_first'`` (the layout
            before issue 18, for old checkpoints).
    """

    def __init__(self, in_channels: int, sde: SDE, parameterization: str = "eps", *, image_size: int,
                 patch_size: int = 2, hidden_size: int = 128, depth: int = 6, num_heads: int = 4,
                 mlp_ratio: float = 4.0, embedding: str = "smooth", emb_dim: int = 256,
                 time_input: str = "log_snr", embed_scale: float | None = None, num_classes: int | None = None,
                 learn_sigma: bool = False, position_order: str = "dit"):
        super().__init__()
        positive_int("in_channels", in_channels)
        positive_int("image_size", image_size)
        positive_int("patch_size", patch_size)
        positive_int("hidden_size", hidden_size)
        positive_int("depth", depth)
        positive_int("num_heads", num_heads)
        positive_int("emb_dim", emb_dim)
        check_common(sde, parameterization, embedding, time_input, embed_scale, num_classes)
        if image_size % patch_size:
            divisors = [p for p in range(1, image_size + 1) if image_size % p == 0]
            raise ValueError(f"patch_size: {patch_size} does not divide image_size={image_size}; allowed: {divisors}")
        if hidden_size % 4 or hidden_size % num_heads:
            raise ValueError(f"hidden_size: expected a multiple of 4 (the 2-D sin-cos position embedding) and of "
                             f"num_heads={num_heads}, got {hidden_size}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not math.isfinite(mlp_ratio) \
                or int(hidden_size * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio: expected a positive number with hidden_size * mlp_ratio >= 1, got {mlp_ratio!r}")
        if not isinstance(learn_sigma, bool):
            raise ValueError(f"learn_sigma: expected True or False, got {learn_sigma!r}")
        if position_order not in POSITION_ORDERS:
            raise ValueError(f"position_order: unknown {position_order!r}; allowed: {', '.join(POSITION_ORDERS)}")
        self.in_channels, self.image_size, self.sde, self.parameterization = in_channels, image_size, sde, parameterization
        self.patch_size, self.num_classes, self.learn_sigma = patch_size, num_classes, learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        grid = image_size // patch_size
        self.patch_embed = nn.Linear(patch_size * patch_size * in_channels, hidden_size)
        # fixed, not learned; rebuilt from the arguments, so not stored in the state dict
        self.register_buffer("pos_embed", sincos_position_embedding_2d(grid, hidden_size, torch.get_default_dtype(),
                                                                       position_order), persistent=False)
        self.embed = NoiseLevelEmbedding(sde, emb_dim, hidden_size, embedding=embedding, time_input=time_input,
                                         embed_scale=embed_scale, num_classes=num_classes)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final = _FinalLayer(hidden_size, patch_size * patch_size * self.out_channels)
        # DiT's initialisation: Xavier-uniform linear maps with zero biases, the timestep MLP and the
        # label table N(0, 0.02^2), then adaLN-Zero
        for module in [self.patch_embed, *self.embed.mlp.modules(), *self.blocks.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in self.embed.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        if self.embed.label is not None:
            nn.init.normal_(self.embed.label.weight, std=0.02)
        for layer in [*(b.ada for b in self.blocks), self.final.ada, self.final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_label(self) -> int | None:
        """The reserved label index meaning "unconditional" (``num_classes``), or None."""
        return self.num_classes

    def _raw(self, x: Tensor, t_input: Tensor, y: Tensor | None) -> Tensor:
        check_image(x, self.in_channels, self.image_size)
        c = self.embed(time_batch(t_input, x), y)
        z = self.patch_embed(patchify(x, self.patch_size)) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            z = block(z, c)
        return unpatchify(self.final(z, c), self.patch_size, self.out_channels)

    def forward(self, x: Tensor, t_input: Tensor, y: Tensor | None = None) -> Tensor:
        out = self._raw(x, t_input, y)
        return out[:, :self.in_channels] if self.learn_sigma else out

    def forward_with_variance(self, x: Tensor, t_input: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(F, v)``: the prediction and the variance output (``learn_sigma=True`` only; module docstring)."""
        if not self.learn_sigma:
            raise ValueError("learn_sigma: this DiT has no variance output (learn_sigma=False); build it with "
                             "learn_sigma=True")
        out = self._raw(x, t_input, y)
        return out[:, :self.in_channels], out[:, self.in_channels:]
