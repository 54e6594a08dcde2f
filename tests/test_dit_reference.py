"""DiT as in the paper (issue 18 item 4): the same weights give the reference's forward pass, its init, learn_sigma.

The reference is facebookresearch/DiT ``models.py`` (with timm's ``PatchEmbed``, ``Attention`` and ``Mlp``
and MAE's ``get_2d_sincos_pos_embed``), transcribed below from its structure in plain torch/numpy: a
strided convolution for the patch embedding, the position grid built with ``np.meshgrid(w, h)``, adaLN
through ``Sequential(SiLU, Linear)``, attention as ``softmax(q k^T / sqrt(d)) v``, and the unpatchify
``einsum('nhwpqc->nchpwq')``. Only the timestep's frequency features differ by design (scoresde embeds
lambda(t) with its own features), so the transcription takes the features as its input.
"""
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import scoresde as sd
from scoresde.nets import DiT
from scoresde.training.spec import spec_kwargs

F64 = torch.float64


def _pos_embed_reference(dim, grid_size):
    # MAE / DiT: the meshgrid puts w (the column) first, and its half is the first half of the vector
    gh, gw = np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid_size, grid_size)

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def _reference_forward(net: DiT, x, t_freq, y):
    """DiT.forward with ``net``'s weights, written after the reference's structure."""
    p, C_out = net.patch_size, net.out_channels
    D = net.pos_embed.shape[1]
    B, C, H, _ = x.shape
    g = H // p
    # timm PatchEmbed: Conv2d(C, D, kernel=p, stride=p), flatten(2).transpose(1, 2); our linear weight is
    # (D, p*p*C) over (row, column, channel)
    w = net.patch_embed.weight.reshape(D, p, p, C).permute(0, 3, 1, 2)
    h = F.conv2d(x, w, net.patch_embed.bias, stride=p).flatten(2).transpose(1, 2)
    # the reference stores its position embedding as float32 (``torch.from_numpy(pos_embed).float()``), as we do
    h = h + torch.from_numpy(_pos_embed_reference(D, g)).float().to(x.dtype)[None]
    # TimestepEmbedder.mlp and LabelEmbedder.embedding_table
    lin0, lin2 = net.embed.mlp[0], net.embed.mlp[2]
    c = lin2(F.silu(lin0(t_freq)))
    if y is not None:
        c = c + net.embed.label.weight[y]

    def modulate(v, shift, scale):
        return v * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    for blk in net.blocks:
        sm, cm, gm, sp, cp, gp = blk.ada(F.silu(c)).chunk(6, dim=1)
        # timm Attention: qkv -> (3, B, heads, N, hd), scaled softmax, proj
        heads, hd = blk.attn.num_heads, D // blk.attn.num_heads
        z = F.layer_norm(h, (D,), eps=1e-6)
        z = modulate(z, sm, cm)
        qkv = blk.attn.qkv(z).reshape(B, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = ((q * hd**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        a = (att @ v).transpose(1, 2).reshape(B, -1, D)
        h = h + gm.unsqueeze(1) * blk.attn.proj(a)
        z = modulate(F.layer_norm(h, (D,), eps=1e-6), sp, cp)
        fc1, fc2 = blk.mlp[0], blk.mlp[2]
        h = h + gp.unsqueeze(1) * fc2(F.gelu(fc1(z), approximate="tanh"))
    shift, scale = net.final.ada(F.silu(c)).chunk(2, dim=1)
    out = net.final.linear(modulate(F.layer_norm(h, (D,), eps=1e-6), shift, scale))
    out = out.reshape(B, g, g, p, p, C_out)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(B, C_out, g * p, g * p)


def _perturbed(net, seed=3, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in net.parameters():
            prm.add_(scale * torch.randn(prm.shape, generator=g, dtype=prm.dtype))
    return net


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("C, size, p, hidden, heads", [(1, 8, 2, 32, 4), (3, 8, 4, 16, 2)])
def test_the_same_weights_give_the_references_forward(learn_sigma, C, size, p, hidden, heads):
    torch.manual_seed(0)
    sde = sd.VPSDE()
    net = _perturbed(DiT(C, sde, image_size=size, patch_size=p, hidden_size=hidden, depth=2, num_heads=heads,
                         emb_dim=16, num_classes=5, learn_sigma=learn_sigma).double())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, C, size, size, generator=g, dtype=F64)
    t = torch.rand(3, generator=g, dtype=F64) * 0.9 + 0.05
    y = torch.tensor([0, 4, 5])  # 5 = the null label
    ref = _reference_forward(net, x, net.embed.features(sde.lam(t)), y)
    assert ref.shape == (3, 2 * C if learn_sigma else C, size, size)
    # the same arithmetic in another order: float64 round-off through two blocks
    if learn_sigma:
        out, v = net.forward_with_variance(x, t, y)
        torch.testing.assert_close(torch.cat([out, v], dim=1), ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(net(x, t, y), out, rtol=0, atol=0)
    else:
        torch.testing.assert_close(net(x, t, y), ref, rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="learn_sigma"):
            net.forward_with_variance(x, t, y)


def test_the_old_row_first_layout_differs_and_old_records_rebuild_it():
    sde = sd.VPSDE()
    torch.manual_seed(0)
    new = _perturbed(DiT(1, sde, image_size=8, hidden_size=16, depth=1, num_heads=2, emb_dim=8).double())
    old = DiT(1, sde, image_size=8, hidden_size=16, depth=1, num_heads=2, emb_dim=8,
              position_order="row_first").double()
    old.load_state_dict(new.state_dict())
    x, t = torch.randn(2, 1, 8, 8, dtype=F64), torch.full((2,), 0.5, dtype=F64)
    assert (new(x, t) - old(x, t)).abs().max() > 1e-3  # the layout matters to a trained net
    assert spec_kwargs({"name": "dit", "kwargs": {}})["position_order"] == "row_first"
    with pytest.raises(ValueError, match="position_order: unknown 'ji'; allowed: dit, row_first"):
        DiT(1, sde, image_size=8, hidden_size=16, depth=1, num_heads=2, position_order="ji")
    with pytest.raises(ValueError, match="learn_sigma: expected True or False"):
        DiT(1, sde, image_size=8, hidden_size=16, depth=1, num_heads=2, learn_sigma=1)


def test_initialisation_is_ditS():
    torch.manual_seed(0)
    net = DiT(3, sd.VPSDE(), image_size=8, patch_size=2, hidden_size=256, depth=2, num_heads=4, num_classes=100,
              learn_sigma=True)

    def std_close(w, target):
        # the sample std of n normal draws has a relative standard error 1 / sqrt(2 n); allow 6 of them
        n = w.numel()
        s = float(w.detach().std())
        assert abs(s / target - 1) < 6 / math.sqrt(2 * n), (s, target)

    std_close(net.embed.label.weight, 0.02)
    for lin in (net.embed.mlp[0], net.embed.mlp[2]):
        std_close(lin.weight, 0.02)
        assert torch.count_nonzero(lin.bias) == 0
    # Xavier-uniform: std sqrt(2 / (fan_in + fan_out))
    w = net.patch_embed.weight
    std_close(w, math.sqrt(2 / (w.shape[0] + w.shape[1])))
    for blk in net.blocks:
        std_close(blk.attn.qkv.weight, math.sqrt(2 / (256 + 768)))
        assert torch.count_nonzero(blk.ada.weight) == 0 and torch.count_nonzero(blk.ada.bias) == 0
    assert torch.count_nonzero(net.final.linear.weight) == 0
    assert net.final.linear.out_features == 2 * 2 * 2 * 3  # p^2 * 2C
    out, v = net.forward_with_variance(torch.randn(2, 3, 8, 8), torch.full((2,), 0.5))
    assert out.shape == v.shape == (2, 3, 8, 8) and torch.count_nonzero(torch.cat([out, v])) == 0
